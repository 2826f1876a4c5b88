"""Attributing a network's outputs to its inputs: integrated gradients (captum), in batches.

Every explained sequence gets an attribution for each input value (step × feature) toward one
scalar output (a class's log-probability, a gene's forecast); the sums per gene, per step and
per obs row are accumulated, and completeness (attributions summing to f(x) - f(baseline)) is
measured from captum's convergence delta.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import timing
from .errors import InputError, listed
from .forecast_inputs import future_gaps, network_inputs
from .preprocessing import encode
from .sequences import Layout, read_labels
from .streaming import sub_index

log = logging.getLogger("anndata_rnn")

METHODS = ("integrated_gradients", "input_x_gradient")
BASELINES = ("mean", "zero")
#: elements of one input copy captum may hold at once (bounds memory: 2**24 float32 = 64 MiB)
_ELEMENT_BUDGET = 2**24


class Output(nn.Module):
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


class Jobs:
    """Sequences to explain: ``ids`` (n,), the column each is explained for, output weights."""

    def __init__(self, ids: np.ndarray, column: np.ndarray, weights: np.ndarray):
        self.ids, self.column, self.weights = ids, column, weights

    def take(self, chosen: np.ndarray) -> Jobs:
        return Jobs(self.ids[chosen], self.column[chosen], self.weights[chosen])


def resolve_targets(target, names: np.ndarray, what: str) -> list[int]:
    names = [str(n) for n in names]
    if target is None:
        return list(range(len(names)))
    if isinstance(target, str):
        target = [target] if target in names else [t.strip() for t in target.split(",")]
    lookup = {n: i for i, n in enumerate(names)}
    missing = [t for t in target if str(t) not in lookup]
    if missing:
        raise InputError(f"unknown {what} {listed(missing)}; the model has: {listed(names, 20)}")
    return list(dict.fromkeys(lookup[str(t)] for t in target))


def explained_only(index, jobs: Jobs):
    """The index of the explained sequences only, and the jobs renumbered into it, so that only
    those sequences need to be encoded (the rest of the data is never held in memory)."""
    chosen = np.unique(jobs.ids)
    renumbered = Jobs(np.searchsorted(chosen, jobs.ids), jobs.column, jobs.weights)
    return sub_index(index, chosen), renumbered


def subsample(jobs: Jobs, max_per_class: int | None, seed: int) -> Jobs:
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


def baseline_values(values, lengths, prep, baseline, n_expression, layout) -> torch.Tensor:
    """The reference input: the input with its expression channels at the baseline."""
    base = values.clone()
    valid = (torch.arange(values.shape[1])[None, :] < lengths[:, None])[..., None]
    if baseline == "mean":
        fill = torch.zeros(n_expression)
    else:  # no expression, in standardized units
        fill = torch.as_tensor(-prep.mean / prep.std, dtype=torch.float32)
    if Layout.of(
        layout
    ).steps_are_gene_chunks:  # steps are chunks of the model's genes, zero-padded at the end
        n_chunks, size = values.shape[1], values.shape[2]
        flat = torch.zeros(n_chunks * size)
        flat[: len(fill)] = fill
        base[:] = flat.reshape(1, n_chunks, size)
        return base
    base[..., :n_expression] = torch.where(valid, fill[:n_expression], values[..., :n_expression])
    return base


@contextlib.contextmanager
def gradient_mode(module: nn.Module, device: torch.device):
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


@timing.timed("attribution")
def attribute(
    output: Output,
    values: torch.Tensor,
    base: torch.Tensor,
    lengths: torch.Tensor,
    jobs: Jobs,
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
    n_genes = (
        n_seq_steps * values.shape[2] if Layout.of(layout).steps_are_gene_chunks else n_expression
    )
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
    with gradient_mode(output, device):
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
            accumulate(acc, attr, ids, jobs.column[part], index, layout)
    output.cpu()
    return acc


def accumulate(acc, attr, ids, column, index, layout) -> None:
    valid = index.mask[ids]
    if Layout.of(layout).steps_are_gene_chunks:
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
    if Layout.of(layout).is_time_series:
        obs_rows = index.steps[ids]
        columns = np.broadcast_to(column[:, None], obs_rows.shape)
        np.add.at(acc["row_sum"], (obs_rows[valid], columns[valid]), steps[valid])
        np.add.at(acc["row_count"], (obs_rows[valid], columns[valid]), 1.0)


def completeness_report(result: dict, method: str) -> dict:
    """Mean and relative |delta| of integrated gradients (empty for other methods)."""
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
# what is explained: which sequences, toward which output


def classifier_jobs(adata, model, index, proba, target, use_labels):
    """Classifiers: each sequence explained toward its predicted class (``proba``, the model's
    probabilities of every sequence) or, with ``use_labels``, its label."""
    classes = np.asarray(model.classes, dtype=object)
    wanted = resolve_targets(target, classes, "class")
    level = model.config.get("label_level", "unit")
    n_classes = len(classes)
    if use_labels:
        label_key = model.config["keys"].get("label_key")
        if label_key not in index.frame(adata).columns:
            where = index.where
            raise InputError(
                f"use_labels needs the model's label column {label_key!r} in {where}: it is "
                "missing from this data (explain by predicted class instead)"
            )
        labels = read_labels(adata, index, label_key).recode(classes)
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
    jobs = Jobs(
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
    output = Output(model.module, "log_proba", "log-probability of the class")
    return [str(c) for c in classes], jobs, output


def forecaster_inputs(model, index, source) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs of a forecaster's first future step (as the forecast tool makes them)."""
    prep = model.preprocessor
    future_times = model.config.get("future_times") or None
    index.check_future_after(future_times)
    enc = encode(index, source, prep)
    _, gaps = future_gaps(enc, future_times, 1)
    x = network_inputs(enc, prep, np.arange(index.n_sequences), last_gap=gaps[:, 0])
    return torch.from_numpy(x), torch.from_numpy(enc.lengths.astype(np.int64))


def forecaster_jobs(model, index, lengths, target):
    """Forecasters: the forecast of the step after each sequence's end, for the target gene(s).

    The output is in the gene's expression units (the standardized forecast times its training
    standard deviation), so attributions are too.
    """
    prep = model.preprocessor
    n_outputs = int(model.config["n_outputs"])
    if Layout.of(model.layout).one_feature:
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
        wanted = resolve_targets(target, features, "gene")
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
    jobs = Jobs(np.concatenate(ids), np.concatenate(column), np.concatenate(weights))
    output = Output(model.module, "forecast", "forecast of the step after the sequence's end")
    return columns, jobs, output


def explained_step_times(index, jobs: Jobs) -> tuple[np.ndarray, str]:
    """Time of each step when every explained sequence has the same time points.

    Otherwise (series sampled at different times, chunks of a profile) the step position, and a
    note saying so.
    """
    positions = np.arange(index.max_steps, dtype=np.float64)
    if index.layout_kind.steps_are_gene_chunks:
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def check_settings(model, method, baseline, n_steps, batch_size, max_per_class) -> None:
    """Refuse settings ``explain`` cannot use with ``model`` (before anything is read)."""
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
    if model.task not in ("classify", "forecast"):
        raise InputError(
            f"explain works on classifiers and forecasters, not on {model.task!r} models"
        )
    if baseline == "zero" and model.preprocessor.scale == "sequence":
        raise InputError(
            "baseline 'zero' needs a model with scale='feature' (this one z-scores each sequence,"
            " where no expression has no fixed value): use baseline 'mean'"
        )


def write_importances(out, result: dict, prep, source, n_columns: int, key: str, layout):
    """The importances of :func:`attribute`'s ``result`` per gene (var, varm; uns for an obsm
    representation) and per observation (obsm, time-series layouts): ``(written, uns entries,
    step importance)``."""
    gene_level = not Layout.of(layout).one_feature
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
        # for each var row, the position of its gene among the model's features (-1 if absent)
        var_rows = pd.Index(prep.features).get_indexer(source.feature_names)
        present = var_rows >= 0
        varm = np.full((out.n_vars, n_columns), np.nan)
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
    if Layout.of(layout).is_time_series:
        with np.errstate(invalid="ignore", divide="ignore"):
            rows = result["row_sum"] / result["row_count"]
        out.obsm[f"{key}_step_importance"] = rows
        written.append(f"obsm/{key}_step_importance")
    return written, uns_extra, step_importance


def log_completeness(result: dict, method: str, n_steps: int) -> dict:
    """:func:`completeness_report`, logged; a warning when integrated gradients did not
    converge (with the ``n_steps`` to try)."""
    completeness = completeness_report(result, method)
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
    return completeness

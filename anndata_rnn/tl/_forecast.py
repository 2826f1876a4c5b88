"""Sequence forecasting: next steps and horizons of time-course expression, beside persistence
and a linear autoregression.

Protocol (the same for both layouts):

- units (series for obs-series, genes for var-series) are split into train / val / test;
- with ``holdout_steps=K`` the last K steps of *every* sequence are cut off before anything is
  fitted (standardization, network, baselines); the network then forecasts them by
  autoregressive rollout from the steps before, and the metrics are computed on those steps of
  the test units (of all units when there is no test split);
- without held-out steps the metrics are one-step-ahead forecasts (teacher forcing: each step
  predicted from the true steps before it) on every step but the first of the test units;
- the network is trained on one-step-ahead targets with teacher forcing (MSE or Huber loss,
  masked where a value was missing), with early stopping on the validation units;
- persistence (the last observed value) and a linear autoregression (scikit-learn ridge on the
  last ``ar_lags`` steps and time gaps, predicting the change) run on the same split and steps.

Values are standardized with training statistics for the network and every result is returned
in the units of the input matrix (after ``normalize_total`` + ``log1p`` when that was applied).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from anndata import AnnData
from sklearn.linear_model import RidgeCV

from ..errors import InputError
from ..model import Model
from ..networks import build_module
from ..preprocessing import FeatureSource, Preprocessor
from ..sequences import (
    SequenceIndex,
    assemble,
    broadcast_to_rows,
    check_layout,
    pool_units,
    scatter_steps,
)
from ..training import fit
from ._common import (
    CHUNK_SEQUENCES,
    check_keys_free,
    fit_preprocessor,
    log_split,
    make_split,
    sequence_keys,
    set_column,
    split_from_column,
    store_uns,
    target_of,
    training_index,
    training_setup,
    versions,
)

log = logging.getLogger("anndata_rnn")

LOSSES = ("mse", "huber")
FORECAST_LAYOUTS = ("obs-series", "var-series")
MODEL_NAMES = ("rnn", "persistence", "linear_ar")


# ---------------------------------------------------------------------------------------------
# public API


def forecast(
    adata: AnnData,
    *,
    layout: str = "obs-series",
    series_key: str | None = None,
    time_key: str | None = None,
    series_subset: list[str] | None = None,
    layer: str | None = None,
    use_rep: str | None = None,
    normalize: str = "auto",
    n_top_genes: int | None = None,
    gene_subset: str | None = None,
    horizon: int | None = None,
    future_times=None,
    holdout_steps: int = 0,
    loss: str = "mse",
    residual: bool = True,
    ar_lags: int = 3,
    hidden=(128, 64),
    cell: str = "lstm",
    bidirectional: bool = False,
    dropout: float = 0.2,
    max_epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    patience: int = 10,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_key: str | None = None,
    seed: int = 0,
    device: str = "auto",
    key_added: str = "rnn",
    overwrite: bool = False,
    quiet: bool = False,
    copy: bool = False,
):
    """Train an LSTM/GRU forecaster of time-course expression and write its forecasts.

    Parameters
    ----------
    adata
        The AnnData (not modified when ``copy=True``).
    layout
        ``"obs-series"``: the observations of a series ordered by time form a sequence whose
        steps have all the genes (or ``use_rep`` columns) as features; ``"var-series"``: each
        gene's values over the observations of a series form a one-feature sequence.
    series_key, time_key
        obs columns naming the series and the numeric time of each observation. Time gaps are
        an input of the network, so irregular sampling (0, 5, 12, 21 h, ...) is handled.
    series_subset
        Only these series (e.g. ``["cdc15"]``).
    layer, use_rep
        Read ``layers[layer]`` or ``obsm[use_rep]`` instead of X.
    normalize, n_top_genes, gene_subset
        As in :func:`anndata_rnn.tl.classify` (in var-series ``gene_subset`` selects which genes
        become sequences).
    horizon
        Steps to forecast beyond the end of every sequence (autoregressive rollout), written to
        ``uns[key]["future"]``. Default 1 (or ``len(future_times)``); 0 writes no future.
    future_times
        Time points of those future steps (after every series' last time point); default: each
        series' last time plus multiples of its median time gap.
    holdout_steps
        Cut the last K steps of every sequence off before fitting and forecast them by rollout;
        the metrics are then computed on these steps (of the test units, or of all units when
        ``test_fraction=0``).
    loss
        ``"mse"`` or ``"huber"`` (robust to outliers), on standardized values.
    residual
        The network predicts the change from the current step (it starts at persistence).
    ar_lags
        Steps the linear autoregression baseline sees.
    hidden, cell, bidirectional, dropout
        Recurrent architecture; forecasting is causal, so ``bidirectional`` must stay False.
    max_epochs, batch_size, lr, patience
        Adam with early stopping on the validation units' one-step loss.
    val_fraction, test_fraction, split_key
        Split of the units (series or genes), seeded, or from a train/val/test column.
    seed, device, key_added, overwrite, quiet, copy
        As in :func:`anndata_rnn.tl.classify`.

    Returns
    -------
    The fitted :class:`~anndata_rnn.Model`; with ``copy=True`` a tuple ``(model, adata_copy)``.

    Writes (``key`` = ``key_added``):

    - ``layers[f"{key}_forecast"]``: every value predicted from the steps before it (one step
      ahead; NaN at the first step of a series and for genes the model does not use). With
      ``use_rep`` (obs-series) the forecast of the representation goes to
      ``obsm[f"{key}_forecast"]`` instead.
    - var-series with ``holdout_steps``: ``varm[f"{key}_forecast"]``, the rollout forecast of the
      last K time points of every gene (columns: series by series, their times in
      ``uns[key]["holdout_columns"]``). obs-series with ``holdout_steps``: the same forecasts in
      ``uns[key]["holdout"]`` (long form like ``future``).
    - ``obsm[f"X_{key}"]`` (per observation) or ``varm[f"X_{key}"]`` (per gene): hidden states.
    - ``obs``/``var`` ``f"{key}_split"``.
    - ``uns[key]``: ``metrics`` (``rnn``, ``persistence``, ``linear_ar``: mse, mae, r2,
      pearson_r = mean per-gene Pearson r), ``evaluation``, ``future`` (``series``, ``unit``,
      ``time``, ``step``, ``values`` rows × features, ``features``), params, history, versions.
    """
    target = target_of(adata, copy)
    key = key_added
    check_layout(layout)
    if layout not in FORECAST_LAYOUTS:
        raise InputError(
            f"forecast works on the layouts {', '.join(FORECAST_LAYOUTS)}, not {layout!r}: a "
            "profile is not a time course"
        )
    if bidirectional:
        raise InputError(
            "a forecaster must be causal: bidirectional layers would see the steps they predict "
            "(drop --bidirectional)"
        )
    if loss not in LOSSES:
        raise InputError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if ar_lags < 1:
        raise InputError(f"ar_lags must be >= 1, got {ar_lags}")
    if holdout_steps < 0:
        raise InputError(f"holdout_steps must be >= 0, got {holdout_steps}")
    future_times, horizon = _check_future(future_times, horizon)
    if time_key is None:
        raise InputError(
            "forecast needs time_key (the obs column of numeric time points): the time gaps "
            "between steps are an input of the forecaster"
        )
    if layout == "var-series" and use_rep is not None:
        raise InputError("use_rep needs layout obs-series (var-series reads genes)")
    arch, train_config, torch_device = training_setup(
        hidden=hidden,
        cell=cell,
        dropout=dropout,
        bidirectional=False,
        max_epochs=max_epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        seed=seed,
        device=device,
    )
    keys = sequence_keys(
        layout=layout,
        series_key=series_key,
        time_key=time_key,
        series_subset=series_subset,
        layer=layer,
        use_rep=use_rep,
        key_added=key,
    )
    source = FeatureSource(target, layer=layer, use_rep=use_rep)
    index = training_index(target, keys, gene_subset)
    _check_lengths(index, holdout_steps)
    _check_future_after(index, future_times)
    check_keys_free(target, output_targets(layout, key), overwrite)

    if split_key is not None:
        split = split_from_column(target, index, split_key)
    else:
        split = make_split(
            index.n_units,
            usable=np.ones(index.n_units, dtype=bool),
            strata=None,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
        )
    ids = {
        name: index.sequences_of_units(np.flatnonzero(split == name))
        for name in ("train", "val", "test")
    }
    if not len(ids["train"]):
        raise InputError("the split has no training units: lower val/test fractions")
    log_split(layout, split)

    # the scored values are never seen by any fit: with test units, their last steps; without,
    # the last steps of every sequence (a purely temporal holdout)
    train_index = index if len(ids["test"]) else truncate(index, holdout_steps)
    prep = Preprocessor(layout=layout, scale="feature", use_time=True)
    fit_preprocessor(
        prep,
        target,
        source,
        train_index,
        ids["train"],
        normalize=normalize,
        n_top_genes=n_top_genes,
        gene_subset=gene_subset,
    )
    train_enc = encode_forecast(train_index, source, prep)
    n_features = train_enc.n_features
    if train_enc.imputed:
        log.info(
            "imputed %d missing values (last observed value, then the training mean); they are "
            "inputs only, never targets or scored values",
            train_enc.imputed,
        )

    config = {
        "task": "forecast",
        "layout": layout,
        "keys": keys,
        "architecture": arch,
        "n_inputs": int(train_enc.values.shape[-1]),
        "n_outputs": int(n_features),
        "residual": bool(residual),
        "horizon": int(horizon),
        "future_times": [float(t) for t in future_times] if future_times is not None else [],
        "holdout_steps": int(holdout_steps),
        "loss": loss,
        "ar_lags": int(ar_lags),
        "train": {
            **train_config.to_dict(),
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "split_key": split_key,
        },
        "seed": seed,
    }
    module = build_module("forecast", config["n_inputs"], config)

    def tensors(name):
        chosen = ids[name]
        x, y, observed = teacher_forcing(train_enc, prep, chosen)
        return (
            torch.from_numpy(x),
            torch.from_numpy(train_enc.lengths[chosen].astype(np.int64)),
            torch.from_numpy(y),
            torch.from_numpy(observed),
        )

    def loss_fn(net, batch):
        x, n, y, observed = batch
        prediction, _, _ = net(x, n)
        y, observed = y[:, : prediction.shape[1]], observed[:, : prediction.shape[1]]
        if loss == "huber":
            err = torch.nn.functional.huber_loss(prediction, y, reduction="none", delta=1.0)
        else:
            err = (prediction - y) ** 2
        weight = observed.to(err.dtype)
        return (err * weight).sum() / weight.sum().clamp_min(1.0)

    history = fit(
        module,
        loss_fn,
        tensors("train"),
        tensors("val") if len(ids["val"]) else None,
        train_config,
        device=torch_device,
        seed=seed,
        quiet=quiet,
        description=f"forecast ({layout})",
    )
    module.eval()

    # the linear AR baseline, fitted on the same training steps
    ar = fit_linear_ar(train_enc, prep, ids["train"], ar_lags)
    ar_description = (
        f"ridge regression (sklearn RidgeCV, alpha {ar.alpha_:g}) of the change to the next step "
        f"on the last {ar_lags} steps" + (" and their time gaps" if prep.use_time else "")
    )

    full_enc = encode_forecast(index, source, prep)
    context_enc = (
        encode_forecast(truncate(index, holdout_steps), source, prep) if holdout_steps else full_enc
    )
    results = predict_all(
        module, prep, index, full_enc, context_enc, config, future_times, torch_device, ar=ar
    )

    eval_ids = ids["test"]
    if holdout_steps and not len(eval_ids):
        eval_ids = np.arange(index.n_sequences)
    metrics, evaluation = {}, {}
    if len(eval_ids):
        metrics, evaluation = evaluate(index, full_enc, prep, results, eval_ids, holdout_steps)
        metrics["linear_ar"]["model"] = ar_description
        metrics["persistence"]["model"] = "the last observed value"
        evaluation["units"] = "test" if len(ids["test"]) else "all"
        _log_metrics(metrics, evaluation)
    else:
        log.warning("no test split and no held-out steps: no metrics computed")

    written = write_results(target, index, prep, source, results, key)
    split_rows = broadcast_to_rows(index, np.asarray(split, dtype=object))
    frame = target.var if layout == "var-series" else target.obs
    set_column(frame, f"{key}_split", split_rows, categories=["train", "val", "test", "unused"])
    written.append(f"{'var' if layout == 'var-series' else 'obs'}/{key}_split")

    config["metrics"] = {
        name: {m: v for m, v in values.items() if np.ndim(v) == 0}
        for name, values in metrics.items()
    }
    config["versions"] = versions()
    config["device"] = str(torch_device)
    store_uns(
        target,
        key,
        {
            "task": "forecast",
            "layout": layout,
            "params": {
                **{k: v for k, v in keys.items() if v is not None},
                **arch,
                **config["train"],
                "horizon": horizon,
                "holdout_steps": holdout_steps,
                "loss": loss,
                "residual": residual,
                "ar_lags": ar_lags,
                "normalize": normalize,
                "n_top_genes": n_top_genes,
                "gene_subset": gene_subset,
            },
            "preprocessing": {
                "normalized": prep.normalize,
                "n_features": n_features,
                "features": np.asarray(prep.features, dtype=object)
                if layout == "obs-series"
                else np.asarray(["value"], dtype=object),
                "n_imputed": full_enc.imputed,
                "units": "log1p(normalize_total)" if prep.normalize else "input",
            },
            "metrics": metrics,
            "evaluation": evaluation,
            **results.uns_entries(),
            "history": {k: np.asarray(v) if isinstance(v, list) else v for k, v in history.items()},
            "written": written,
            "seed": seed,
            "device": str(torch_device),
            "versions": config["versions"],
            "notes": index.notes,
        },
    )
    model = Model(config, prep, module.cpu())
    return (model, target) if copy else model


def output_targets(layout: str, key: str) -> list[tuple[str, str]]:
    """The keys a forecaster writes (checked before anything is computed)."""
    if layout == "var-series":
        return [
            ("var", f"{key}_split"),
            ("layers", f"{key}_forecast"),
            ("varm", f"{key}_forecast"),
            ("varm", f"X_{key}"),
            ("uns", key),
        ]
    return [
        ("obs", f"{key}_split"),
        ("layers", f"{key}_forecast"),
        ("obsm", f"{key}_forecast"),
        ("obsm", f"X_{key}"),
        ("uns", key),
    ]


def apply_forecaster(
    target: AnnData,
    model: Model,
    *,
    key: str,
    source: FeatureSource,
    index: SequenceIndex,
    device,
    batch_size: int,
) -> dict:
    """Forecast with a saved forecaster; writes the same keys as training (no split).

    The held-out steps (``holdout_steps`` of the training run) are forecast again by rollout
    and scored for the RNN and persistence on every sequence of the new data (all of them are
    unseen); the linear AR baseline is not stored in the model file.
    """
    config = model.config
    prep = model.preprocessor
    holdout_steps = int(config.get("holdout_steps", 0))
    future_times = config.get("future_times") or None
    _check_lengths(index, holdout_steps)
    _check_future_after(index, future_times)
    full_enc = encode_forecast(index, source, prep)
    context_enc = (
        encode_forecast(truncate(index, holdout_steps), source, prep) if holdout_steps else full_enc
    )
    results = predict_all(
        model.module,
        prep,
        index,
        full_enc,
        context_enc,
        config,
        future_times,
        device,
        batch_size=batch_size,
    )
    written = write_results(target, index, prep, source, results, key)
    out = {"written": written, "n_imputed": full_enc.imputed, **results.uns_entries()}
    metrics, evaluation = evaluate(
        index, full_enc, prep, results, np.arange(index.n_sequences), holdout_steps
    )
    metrics.pop("linear_ar", None)
    evaluation["units"] = "all"
    out["metrics"] = metrics
    out["evaluation"] = evaluation
    return out


# ---------------------------------------------------------------------------------------------
# sequences for forecasting


def truncate(index: SequenceIndex, k: int) -> SequenceIndex:
    """The same sequences without their last ``k`` steps (held out from every fit)."""
    if k <= 0:
        return index
    steps = index.steps.copy()
    times = index.times.copy()
    lengths = index.lengths
    for s in range(index.n_sequences):
        steps[s, lengths[s] - k : lengths[s]] = -1
        times[s, lengths[s] - k : lengths[s]] = np.nan
    return dataclasses.replace(index, steps=steps, times=times, notes=[])


@dataclasses.dataclass
class Encoded:
    """Standardized sequences and what was really observed (imputed values are never targets)."""

    values: np.ndarray  # (n, steps, n_features [+ 1 time-gap channel]) float32
    observed: np.ndarray  # (n, steps, n_features) bool
    lengths: np.ndarray  # (n,)
    times: np.ndarray  # (n, steps), NaN on padding
    n_features: int
    imputed: int


def encode_forecast(index: SequenceIndex, source: FeatureSource, prep: Preprocessor) -> Encoded:
    """Every sequence of ``index`` standardized (as in :func:`~._common.encode`) + observed mask."""
    parts, observed, imputed = [], [], 0
    all_ids = np.arange(index.n_sequences)
    for start in range(0, len(all_ids), CHUNK_SEQUENCES):
        chosen = all_ids[start : start + CHUNK_SEQUENCES]
        rows = index.obs_rows(chosen)
        block = prep.transform_rows(source.read_rows(rows), source.feature_names)
        raw = assemble(index, chosen, rows, block)
        seen = ~np.isnan(raw)
        observed.append(seen)
        valid = index.mask[chosen]
        imputed += int((~seen & valid[..., None]).sum())
        raw = _causal_fill(raw, seen, prep.mean)
        parts.append(prep.transform_sequences(raw, index.times[chosen]))
    values = np.concatenate(parts)
    n_features = len(prep.mean)
    return Encoded(
        values=values,
        observed=np.concatenate(observed) & index.mask[..., None],
        lengths=index.lengths.astype(np.int64),
        times=index.times,
        n_features=n_features,
        imputed=imputed,
    )


def _causal_fill(raw: np.ndarray, seen: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Missing values -> the last observed value of the same sequence and feature, else the
    training mean: no input ever carries information from a later step."""
    if seen.all():
        return raw
    steps = np.arange(raw.shape[1])[None, :, None]
    last_seen = np.maximum.accumulate(np.where(seen, steps, -1), axis=1)
    n, _, f = raw.shape
    filled = raw[np.arange(n)[:, None, None], np.maximum(last_seen, 0), np.arange(f)[None, None, :]]
    filled = np.where(last_seen >= 0, filled, mean.astype(np.float32))
    return np.where(seen, raw, filled).astype(np.float32)


def _gap_channel(prep: Preprocessor, gaps: np.ndarray) -> np.ndarray:
    return ((np.nan_to_num(gaps, nan=0.0) - prep.dt_mean) / prep.dt_std).astype(np.float32)


def network_inputs(
    enc: Encoded, prep: Preprocessor, ids: np.ndarray, last_gap: np.ndarray | None = None
) -> np.ndarray:
    """Inputs ``(n, steps, n_inputs)``: features of step t and the time gap to step t + 1.

    ``last_gap`` is the raw gap from each sequence's last step to the step forecast after it.
    """
    x = enc.values[ids].copy()
    if not prep.use_time:
        return x
    lengths = enc.lengths[ids]
    gap = x[..., -1].copy()
    gap[:, :-1] = x[:, 1:, -1]  # the gap to the next step is the next step's own gap channel
    last = np.zeros(len(ids)) if last_gap is None else np.asarray(last_gap, dtype=np.float64)
    gap[np.arange(len(ids)), lengths - 1] = _gap_channel(prep, last)
    gap[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = 0.0
    x[..., -1] = gap
    return x


def teacher_forcing(enc: Encoded, prep: Preprocessor, ids: np.ndarray):
    """Inputs, next-step targets and the mask of targets really observed."""
    x = network_inputs(enc, prep, ids)
    f = enc.n_features
    y = np.zeros((len(ids), x.shape[1], f), dtype=np.float32)
    observed = np.zeros((len(ids), x.shape[1], f), dtype=bool)
    y[:, :-1] = enc.values[ids, 1:, :f]
    observed[:, :-1] = enc.observed[ids, 1:]
    return x, y, observed


def _future_gaps(enc: Encoded, future_times, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Times ``(n, horizon)`` of the future steps of every sequence and the gaps between them."""
    n = len(enc.lengths)
    last = enc.times[np.arange(n), enc.lengths - 1]
    if future_times is not None:
        times = np.tile(np.asarray(future_times, dtype=np.float64), (n, 1))
    else:
        dt = np.diff(enc.times, axis=1)
        with np.errstate(all="ignore"):
            median = np.nanmedian(np.where(np.isfinite(dt), dt, np.nan), axis=1)
        median = np.where(np.isfinite(median) & (median > 0), median, 1.0)
        times = last[:, None] + median[:, None] * np.arange(1, horizon + 1)[None, :]
    gaps = np.diff(np.concatenate([last[:, None], times], axis=1), axis=1)
    return times, gaps


def _holdout_gaps(full: Encoded, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Times ``(n, k)`` of the held-out last steps and the gaps leading to each."""
    n = len(full.lengths)
    cols = full.lengths[:, None] - k + np.arange(k)[None, :]
    times = full.times[np.arange(n)[:, None], cols]
    before = full.times[np.arange(n)[:, None], cols - 1]
    return times, times - before


# ---------------------------------------------------------------------------------------------
# running the network and the baselines


@dataclasses.dataclass
class Forecasts:
    """Everything predicted, in the input's units (standardization undone)."""

    layout: str
    features: np.ndarray
    one_step: dict  # model -> (n, steps, f): prediction of step t + 1 made at step t
    hidden: np.ndarray  # (n, steps, h)
    final_hidden: np.ndarray  # (n, h)
    holdout: dict  # model -> (n, k, f) rollout of the held-out last steps (k may be 0)
    holdout_times: np.ndarray  # (n, k)
    future: np.ndarray  # (n, horizon, f) RNN rollout beyond the end
    future_times: np.ndarray  # (n, horizon)
    index: SequenceIndex

    def uns_entries(self) -> dict:
        out = {"future": self._long(self.future, self.future_times)}
        k = self.holdout_times.shape[1]
        if k and self.layout == "obs-series":
            out["holdout"] = self._long(self.holdout["rnn"], self.holdout_times)
        if k and self.layout == "var-series":
            series = self.index.sequence_series
            names = list(dict.fromkeys(series))
            first = np.array([np.flatnonzero(series == name)[0] for name in names])
            out["holdout_columns"] = {
                "series": np.repeat(np.asarray(names, dtype=object), k),
                "time": self.holdout_times[first].ravel().astype(np.float64),
                "step": np.tile(np.arange(1, k + 1, dtype=np.int64), len(names)),
            }
        return out

    def _long(self, values: np.ndarray, times: np.ndarray) -> dict:
        """One row per (sequence, step): plain string / float arrays that R reads."""
        n, h = times.shape
        index = self.index
        return {
            "series": np.repeat(np.asarray(index.sequence_series, dtype=object), h),
            "unit": np.repeat(np.asarray(index.unit_names[index.unit], dtype=object), h),
            "time": times.reshape(-1).astype(np.float64),
            "step": np.tile(np.arange(1, h + 1, dtype=np.int64), n),
            "values": values.reshape(n * h, values.shape[-1]).astype(np.float64),
            "features": np.asarray(self.features, dtype=object),
        }


@torch.no_grad()
def rnn_forecast(
    module,
    x: np.ndarray,
    lengths: np.ndarray,
    later_gaps: np.ndarray,
    prep: Preprocessor,
    device,
    batch_size: int = 512,
):
    """One-step forecasts along ``x`` and the rollout of ``1 + later_gaps.shape[1]`` steps.

    ``x`` must carry, at each sequence's last step, the gap to the first step rolled out;
    ``later_gaps`` are the raw gaps between the following rolled-out steps.
    Returns standardized ``(one_step, hidden, final_hidden, rollout)``.
    """
    module.eval()
    module.to(device)
    n_out = module.n_outputs
    n_roll = later_gaps.shape[1] + 1
    one_step, hidden, final, rollout = [], [], [], []
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[start : start + batch_size]).to(device)
        nb = torch.from_numpy(lengths[start : start + batch_size].astype(np.int64))
        prediction, out, state = module(xb, nb)
        rows = torch.arange(len(nb), device=device)
        last = (nb - 1).to(device)
        step = prediction[rows, last]
        rolled = [step]
        gaps = torch.from_numpy(_gap_channel(prep, later_gaps[start : start + batch_size])).to(
            device
        )
        ones = torch.ones(len(nb), dtype=torch.int64)
        for j in range(n_roll - 1):
            inp = step[:, None, :]
            if prep.use_time:
                inp = torch.cat([inp, gaps[:, j, None, None]], dim=-1)
            next_pred, _, state = module(inp, ones, state)
            step = next_pred[:, 0]
            rolled.append(step)
        one_step.append(prediction.cpu().numpy())
        hidden.append(out.cpu().numpy())
        final.append(out[rows, last].cpu().numpy())
        rollout.append(torch.stack(rolled, dim=1)[:, :, :n_out].cpu().numpy())
    return (
        np.concatenate(one_step),
        np.concatenate(hidden),
        np.concatenate(final),
        np.concatenate(rollout),
    )


def _lag_design(x: np.ndarray, positions: np.ndarray, lags: int) -> np.ndarray:
    """``(len(positions), lags * n_inputs)``: inputs at steps t, t-1, ... (clamped at 0)."""
    seq, t = positions
    cols = [x[seq, np.maximum(t - j, 0)] for j in range(lags)]
    return np.concatenate(cols, axis=1)


def fit_linear_ar(enc: Encoded, prep: Preprocessor, train_ids: np.ndarray, lags: int) -> RidgeCV:
    """Ridge on the last ``lags`` inputs (features + gap to the next step) -> change to t + 1."""
    x = network_inputs(enc, prep, train_ids)
    f = enc.n_features
    lengths = enc.lengths[train_ids]
    valid = np.arange(x.shape[1])[None, :] < (lengths[:, None] - 1)
    positions = np.nonzero(valid)
    design = _lag_design(x, positions, lags)
    seq, t = positions
    change = enc.values[train_ids][seq, t + 1, :f] - x[seq, t, :f]
    model = RidgeCV(alphas=np.logspace(-3, 3, 7))
    model.fit(design, change)
    return model


def ar_forecast(ar: RidgeCV, x: np.ndarray, lengths: np.ndarray, later_gaps, prep, lags: int):
    """The linear AR's one-step forecasts along ``x`` and its rollout (like :func:`rnn_forecast`)."""
    f = ar.coef_.shape[0] if ar.coef_.ndim == 2 else 1
    n, steps = x.shape[:2]
    valid = np.arange(steps)[None, :] < lengths[:, None]
    positions = np.nonzero(valid)
    one_step = np.zeros((n, steps, f), dtype=np.float32)
    seq, t = positions
    change = ar.predict(_lag_design(x, positions, lags)).reshape(len(seq), f)
    one_step[seq, t] = x[seq, t, :f] + change
    # rollout: a window of the last `lags` inputs, fed with the AR's own predictions
    window = np.stack([x[np.arange(n), np.maximum(lengths - 1 - j, 0)] for j in range(lags)], 1)
    step = one_step[np.arange(n), lengths - 1]
    rolled = [step]
    gaps = _gap_channel(prep, later_gaps)
    for j in range(later_gaps.shape[1]):
        new = step if not prep.use_time else np.concatenate([step, gaps[:, j, None]], axis=1)
        window = np.concatenate([new[:, None], window[:, :-1]], axis=1)
        step = window[:, 0, :f] + ar.predict(window.reshape(n, -1)).reshape(n, f)
        rolled.append(step.astype(np.float32))
    return one_step, np.stack(rolled, axis=1)


def predict_all(
    module,
    prep: Preprocessor,
    index: SequenceIndex,
    full: Encoded,
    context_enc: Encoded,
    config: dict,
    future_times,
    device,
    *,
    batch_size: int = 512,
    ar: RidgeCV | None = None,
) -> Forecasts:
    """One-step forecasts, held-out rollouts and future rollouts for every sequence."""
    n = index.n_sequences
    all_ids = np.arange(n)
    f = full.n_features
    k = int(config.get("holdout_steps", 0))
    horizon = int(config.get("horizon", 1))
    lags = int(config.get("ar_lags", 3))

    def units(a):
        return prep.inverse_values(a.astype(np.float64))

    f_times, f_gaps = _future_gaps(full, future_times, max(horizon, 1))
    x_full = network_inputs(full, prep, all_ids, last_gap=f_gaps[:, 0])
    one_step, hidden, final, future = rnn_forecast(
        module, x_full, full.lengths, f_gaps[:, 1:], prep, device, batch_size
    )
    one = {"rnn": units(one_step), "persistence": units(full.values[..., :f])}
    if ar is not None:
        one["linear_ar"] = units(
            ar_forecast(ar, x_full, full.lengths, f_gaps[:, :0], prep, lags)[0]
        )

    holdout = {}
    h_times = np.zeros((n, 0))
    if k:
        h_times, h_gaps = _holdout_gaps(full, k)
        x_fit = network_inputs(context_enc, prep, all_ids, last_gap=h_gaps[:, 0])
        *_, rolled = rnn_forecast(
            module, x_fit, context_enc.lengths, h_gaps[:, 1:], prep, device, batch_size
        )
        holdout["rnn"] = units(rolled)
        last = context_enc.values[all_ids, context_enc.lengths - 1, :f]
        holdout["persistence"] = units(np.repeat(last[:, None], k, axis=1))
        if ar is not None:
            holdout["linear_ar"] = units(
                ar_forecast(ar, x_fit, context_enc.lengths, h_gaps[:, 1:], prep, lags)[1]
            )
    features = prep.features if index.layout == "obs-series" else np.asarray(["value"])
    return Forecasts(
        layout=index.layout,
        features=np.asarray(features, dtype=object),
        one_step=one,
        hidden=hidden,
        final_hidden=final,
        holdout=holdout,
        holdout_times=h_times,
        future=units(future[:, :horizon]),
        future_times=f_times[:, :horizon],
        index=index,
    )


# ---------------------------------------------------------------------------------------------
# metrics


def regression_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, observed: np.ndarray, gene: np.ndarray
) -> dict:
    """MSE, MAE, R² and the mean per-gene Pearson r over the observed entries.

    All arrays have one entry per scored value; ``gene`` says which gene each belongs to.
    R² is ``1 - SSE / SST`` with SST around each gene's mean (sklearn's variance-weighted R²).
    A gene's Pearson r needs >= 3 values and non-constant truth and prediction, else it is NaN
    (persistence over held-out steps predicts a constant, so its r is NaN there).
    """
    t = y_true[observed].astype(np.float64)
    p = y_pred[observed].astype(np.float64)
    g = np.unique(gene[observed], return_inverse=True)[1]
    if not len(t):
        nan = np.nan
        return {
            "mse": nan,
            "mae": nan,
            "r2": nan,
            "pearson_r": nan,
            "n_genes_pearson": 0,
            "n_values": 0,
        }
    err = t - p
    n_g = np.bincount(g).astype(np.float64)

    def gsum(v):
        return np.bincount(g, weights=v, minlength=len(n_g))

    mean_t, mean_p = gsum(t) / n_g, gsum(p) / n_g
    dt, dp = t - mean_t[g], p - mean_p[g]
    sst = float((dt**2).sum())
    var_t, var_p, cov = gsum(dt**2), gsum(dp**2), gsum(dt * dp)
    ok = (n_g >= 3) & (var_t > 1e-12 * n_g) & (var_p > 1e-12 * n_g)
    r = np.full(len(n_g), np.nan)
    r[ok] = cov[ok] / np.sqrt(var_t[ok] * var_p[ok])
    return {
        "mse": float(np.mean(err**2)),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1 - (err**2).sum() / sst) if sst > 0 else np.nan,
        "pearson_r": float(np.mean(r[ok])) if ok.any() else np.nan,
        "n_genes_pearson": int(ok.sum()),
        "n_values": int(len(t)),
    }


def evaluate(index, full: Encoded, prep, results: Forecasts, ids, k: int):
    """Metrics of every model on the chosen sequences: held-out rollout or one step ahead."""
    f = full.n_features
    truth = prep.inverse_values(full.values[ids, :, :f].astype(np.float64))
    if index.layout == "var-series":
        gene_of = np.broadcast_to(index.unit[ids][:, None, None], truth.shape)
    else:
        gene_of = np.broadcast_to(np.arange(f)[None, None, :], truth.shape)
    metrics = {}
    if k:
        cols = full.lengths[ids][:, None] - k + np.arange(k)[None, :]
        rows = np.arange(len(ids))[:, None]
        y, seen, genes = truth[rows, cols], full.observed[ids][rows, cols], gene_of[rows, cols]
        for name, values in results.holdout.items():
            metrics[name] = regression_metrics(y, values[ids], seen, genes)
        evaluation = {"kind": "rollout of the held-out last steps", "steps": k}
    else:
        # the prediction made at step t is scored against step t + 1
        y, seen, genes = truth[:, 1:], full.observed[ids, 1:], gene_of[:, 1:]
        for name, values in results.one_step.items():
            metrics[name] = regression_metrics(y, values[ids, :-1], seen, genes)
        evaluation = {"kind": "one step ahead", "steps": 1}
    evaluation["n_sequences"] = len(ids)
    return metrics, evaluation


def _log_metrics(metrics: dict, evaluation: dict) -> None:
    parts = [f"{name} {values['mse']:.4g}" for name, values in metrics.items() if "mse" in values]
    log.info(
        "MSE (%s, %d %s sequences): %s",
        evaluation["kind"],
        evaluation["n_sequences"],
        evaluation.get("units", ""),
        ", ".join(parts),
    )


# ---------------------------------------------------------------------------------------------
# writing back


def write_results(
    target: AnnData,
    index: SequenceIndex,
    prep: Preprocessor,
    source: FeatureSource,
    results: Forecasts,
    key: str,
) -> list[str]:
    """The inverse of the sequence index: forecasts into layers / obsm / varm."""
    rnn = results.one_step["rnn"]
    n, steps, f = rnn.shape
    per_step = np.full((n, steps, f), np.nan)
    per_step[:, 1:] = rnn[:, :-1]  # the forecast of step t was made at step t - 1
    per_step[~index.mask] = np.nan
    written = []
    if index.layout == "obs-series":
        rows = scatter_steps(index, per_step)
        if source.use_rep is not None:
            target.obsm[f"{key}_forecast"] = rows.astype(np.float32)
            written.append(f"obsm/{key}_forecast")
        else:
            layer = np.full((index.n_obs, target.n_vars), np.nan, dtype=np.float32)
            lookup = {name: i for i, name in enumerate(source.feature_names)}
            cols = np.array([lookup.get(name, -1) for name in prep.features])
            present = cols >= 0
            layer[:, cols[present]] = rows[:, present]
            target.layers[f"{key}_forecast"] = layer
            written.append(f"layers/{key}_forecast")
        target.obsm[f"X_{key}"] = scatter_steps(index, results.hidden).astype(np.float32)
        written.append(f"obsm/X_{key}")
        return written

    # var-series: sequence s is gene unit_rows[unit[s]] over the obs rows steps[s]
    layer = np.full((index.n_obs, index.n_vars), np.nan, dtype=np.float32)
    genes = np.broadcast_to(index.unit_rows[index.unit][:, None], index.steps.shape)
    valid = index.mask
    layer[index.steps[valid], genes[valid]] = per_step[..., 0][valid]
    target.layers[f"{key}_forecast"] = layer
    written.append(f"layers/{key}_forecast")
    k = results.holdout_times.shape[1]
    if k:
        series = index.sequence_series
        names = list(dict.fromkeys(series))
        column = {name: i for i, name in enumerate(names)}
        per_unit = np.full((index.n_units, len(names) * k), np.nan)
        rolled = results.holdout["rnn"][..., 0]
        for s in range(index.n_sequences):
            c = column[series[s]] * k
            per_unit[index.unit[s], c : c + k] = rolled[s]
        target.varm[f"{key}_forecast"] = broadcast_to_rows(index, per_unit)
        written.append(f"varm/{key}_forecast")
    embedding = pool_units(index, results.final_hidden)
    target.varm[f"X_{key}"] = broadcast_to_rows(index, embedding).astype(np.float32)
    written.append(f"varm/X_{key}")
    return written


# ---------------------------------------------------------------------------------------------
# checks


def _check_future(future_times, horizon):
    if future_times is not None:
        if isinstance(future_times, str):
            try:
                future_times = [float(t) for t in future_times.split(",") if t.strip()]
            except ValueError:
                raise InputError(
                    f"future times must be numbers like 35,41,47, got {future_times!r}"
                ) from None
        future_times = np.asarray(future_times, dtype=np.float64).ravel()
        if not len(future_times) or not np.isfinite(future_times).all():
            raise InputError("future_times must be finite time points")
        if (np.diff(future_times) <= 0).any():
            raise InputError("future_times must be increasing")
        if horizon is not None and horizon != len(future_times):
            raise InputError(
                f"horizon={horizon} but {len(future_times)} future time points were given: "
                "give one or make them agree"
            )
        horizon = len(future_times)
    if horizon is None:
        horizon = 1
    if horizon < 0:
        raise InputError(f"horizon must be >= 0, got {horizon}")
    return future_times, int(horizon)


def _check_future_after(index: SequenceIndex, future_times) -> None:
    if future_times is None or not len(future_times):
        return
    last = np.nanmax(index.times, axis=1)
    late = last >= future_times[0]
    if late.any():
        s = int(np.flatnonzero(late)[0])
        raise InputError(
            f"future time {future_times[0]:g} is not after the last time point "
            f"{last[s]:g} of series {index.sequence_series[s]!r}: give future time points "
            "after every series' end (or leave them out to use each series' median time gap)"
        )


def _check_lengths(index: SequenceIndex, k: int) -> None:
    short = index.lengths < k + 2
    if short.any():
        s = int(np.flatnonzero(short)[0])
        raise InputError(
            f"holdout_steps={k} leaves fewer than 2 steps in series "
            f"{index.sequence_series[s]!r} ({index.lengths[s]} time points): lower "
            "--holdout-steps or drop short series (--series-subset)"
        )

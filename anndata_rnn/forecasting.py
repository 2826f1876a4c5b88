"""Running a forecaster and its baselines over encoded sequences, and scoring the forecasts.

The protocol (the same for both layouts):

- units (series for obs-series, genes for var-series) are split into train / val / test;
- with ``holdout_steps=K`` the last K steps of *every* sequence (of every unit: training,
  validation and test alike) are cut off before anything is fitted (preprocessing statistics,
  network, AR baseline): a pure temporal holdout. The network then forecasts them by
  autoregressive rollout from the steps before, and the metrics are computed on those steps of
  the test units (of all units when there is no test split); no fitted quantity has seen them;
- without held-out steps the metrics are one-step-ahead forecasts (teacher forcing) on every step
  but the first of the test units (a cross-unit evaluation: other units' steps at the same
  times were seen in training);
- the network is trained on one-step-ahead targets (MSE or Huber loss, masked where a value was
  missing), with early stopping on the validation units;
- persistence (the last observed value) and a linear autoregression run on the same split and
  steps; the linear AR (and the network's AR path, which starts at its fit) is dense on few
  genes and per gene on many (:func:`~anndata_rnn.baselines.resolve_ar_form`);
- a fit that learned no more than persistence, or (started at the ridge fit) did not improve on
  that start (one step ahead on validation and, with held-out steps, on the rollout of the
  validation units' last training steps), is flagged (``history["failed_fit"]``,
  ``failed_against``) and cautioned; the ridge start is then kept.

One-step forecasts along every sequence (teacher forcing), autoregressive rollouts of held-out
last steps and of future steps beyond each sequence's end, for the network, persistence and the
linear AR; all returned in the input's units (standardization undone).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .baselines import (
    AR_RANKS,
    GeneRidgeAR,
    ar_forecast,
    ar_parameters,
    fit_linear_ar,
    resolve_ar_form,
)
from .errors import InputError
from .features import FeatureSource
from .forecast_inputs import future_gaps, holdout_gaps, network_inputs, teacher_forcing
from .metrics import regression_metrics
from .networks import build_module, masked_mean
from .networks.forecaster import rollout
from .preprocessing import Encoded, Preprocessor, encode, gap_channel
from .sequences import (
    TIME_SERIES_LAYOUTS,
    Layout,
    SequenceIndex,
    broadcast_to_rows,
    pool_units,
    scatter_steps,
)
from .training import dataset_loss, fit

if TYPE_CHECKING:  # (scikit-learn loads when the AR baseline is fitted)
    from sklearn.linear_model import RidgeCV

log = logging.getLogger("anndata_rnn")

LOSSES = ("mse", "huber")
#: how the title of a run names the form of the linear AR
AR_FORM_TEXT = {"dense": "dense", "per_gene": "per-gene"}
#: forecasting needs time: the time-series layouts
FORECAST_LAYOUTS = TIME_SERIES_LAYOUTS


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
        if k and Layout.of(self.layout).steps_are_observations:
            out["holdout"] = self._long(self.holdout["rnn"], self.holdout_times)
        if k and Layout.of(self.layout).one_feature:
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
    ar: RidgeCV | GeneRidgeAR | None = None,
    others: dict | None = None,
) -> Forecasts:
    """One-step forecasts, held-out rollouts and future rollouts for every sequence.

    ``others`` (name -> network) are scored the same way (e.g. the linear path alone)."""
    n = index.n_sequences
    all_ids = np.arange(n)
    f = full.n_features
    k = int(config.get("holdout_steps", 0))
    horizon = int(config.get("horizon", 1))
    lags = int(config.get("ar_lags", 3))

    def units(a):
        return prep.inverse_values(a.astype(np.float64))

    f_times, f_gaps = future_gaps(full, future_times, max(horizon, 1))
    x_full = network_inputs(full, prep, all_ids, last_gap=f_gaps[:, 0])
    # the network and any other network (the linear path alone) run the same rollouts
    networks = {"rnn": module, **(others or {})}
    future_channel = gap_channel(prep, f_gaps[:, 1:])
    one = {}
    for name, net in networks.items():
        one_step, *rest = rollout(net, x_full, full.lengths, future_channel, device, batch_size)
        one[name] = units(one_step)
        if name == "rnn":
            hidden, final, future = rest
    one["persistence"] = units(full.values[..., :f])
    if ar is not None:
        one["linear_ar"] = units(
            ar_forecast(ar, x_full, full.lengths, f_gaps[:, :0], prep, lags)[0]
        )

    holdout = {}
    h_times = np.zeros((n, 0))
    if k:
        h_times, h_gaps = holdout_gaps(full, k)
        x_fit = network_inputs(context_enc, prep, all_ids, last_gap=h_gaps[:, 0])
        holdout_channel = gap_channel(prep, h_gaps[:, 1:])
        for name, net in networks.items():
            *_, rolled = rollout(
                net, x_fit, context_enc.lengths, holdout_channel, device, batch_size
            )
            holdout[name] = units(rolled)
        last = context_enc.values[all_ids, context_enc.lengths - 1, :f]
        holdout["persistence"] = units(np.repeat(last[:, None], k, axis=1))
        if ar is not None:
            holdout["linear_ar"] = units(
                ar_forecast(ar, x_fit, context_enc.lengths, h_gaps[:, 1:], prep, lags)[1]
            )
    features = prep.features if index.layout_kind.steps_are_observations else np.asarray(["value"])
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


def evaluate(index, full: Encoded, prep, results: Forecasts, ids, k: int):
    """Metrics of every model on the chosen sequences: held-out rollout or one step ahead."""
    f = full.n_features
    truth = prep.inverse_values(full.values[ids, :, :f].astype(np.float64))
    if index.layout_kind.one_feature:
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


def log_metrics(metrics: dict, evaluation: dict) -> None:
    parts = [f"{name} {values['mse']:.4g}" for name, values in metrics.items() if "mse" in values]
    log.info(
        "MSE (%s, %d %s sequences): %s",
        evaluation["kind"],
        evaluation["n_sequences"],
        evaluation.get("units", ""),
        ", ".join(parts),
    )


def parse_future(future_times, horizon):
    """Validated future time points (or None) and the horizon they imply."""
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


def check_settings(layout, bidirectional, loss, ar_lags, holdout_steps, time_key, use_rep):
    """The forecast settings that need no data."""
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
    if time_key is None:
        raise InputError(
            "forecast needs time_key (the obs column of numeric time points): the time gaps "
            "between steps are an input of the forecaster"
        )
    if Layout.of(layout).one_feature and use_rep is not None:
        raise InputError("use_rep needs layout obs-series (var-series reads genes)")


def train_forecaster(
    config: dict,
    enc: Encoded,
    prep: Preprocessor,
    ids: dict,
    ar: RidgeCV | GeneRidgeAR | None,
    train_config,
    *,
    device,
    seed: int,
    quiet: bool,
    description: str,
):
    """Build the forecaster ``config`` describes and train it one step ahead (teacher forcing;
    MSE or Huber loss on observed targets only). An AR path starts at the ridge fit ``ar`` (of
    the same form, dense or per gene) and the untrained network competes for the best validation
    loss, so the result is never worse than that start on the validation units; the start is
    kept unless the trained weights are ``WARM_START_TOLERANCE`` better (on validation, else on
    the training steps) and, with ``holdout_steps`` K, also roll the validation units' last K
    training steps out with a lower MSE (:func:`validation_rollout`, ``rollout_check_mse``). The
    history says whether the fit failed against persistence or against that start
    (:func:`fit_checks`; ``"warm start rollout"`` for the rollout) and which weights were kept
    (``kept``).
    Returns ``(module, history)``."""
    module = build_module("forecast", config["n_inputs"], config)

    def tensors(name):
        chosen = ids[name]
        x, y, observed = teacher_forcing(enc, prep, chosen)
        return tuple(torch.from_numpy(a) for a in (x, enc.lengths[chosen], y, observed))

    def loss_fn(net, batch):
        x, n, y, observed = batch
        prediction, _, _ = net(x, n)
        y, observed = y[:, : prediction.shape[1]], observed[:, : prediction.shape[1]]
        if config["loss"] == "huber":
            err = torch.nn.functional.huber_loss(prediction, y, reduction="none", delta=1.0)
        else:
            err = (prediction - y) ** 2
        return masked_mean(err, observed)

    train = tensors("train")
    val = tensors("val") if len(ids["val"]) else None
    warm = ar is not None and getattr(module, "ar", None) is not None
    # a model that learned nothing is persistence: measure it before the warm start
    persistence = dataset_loss(module, loss_fn, train, device=device, seed=seed)
    start_losses = None
    if warm:
        module.init_linear_ar(
            np.atleast_2d(ar.coef_), np.atleast_1d(ar.intercept_), getattr(ar, "loadings_", None)
        )
        start_losses = fit_losses(module, loss_fn, train, val, device, seed)
        start_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    history = fit(
        module,
        loss_fn,
        train,
        val,
        train_config,
        device=device,
        seed=seed,
        quiet=quiet,
        description=description,
        initial_candidate=warm,
        reference_loss=persistence,
    )
    history.update(fit_checks(module, loss_fn, train, val, device, seed, history, start_losses))
    if warm:
        # the start is kept unless training beat it by WARM_START_TOLERANCE: a smaller gain on
        # a few validation units did not carry over to the test units (benchmarks/
        # forecast_scale.py: 0.5 % better on validation, 4.7 % worse on test)
        history["kept"] = "trained"
        k = int(config.get("holdout_steps", 0))
        if "warm start" not in history["failed_against"] and k and len(ids["val"]):
            # the task scores a K-step rollout: the trained weights must also roll the
            # validation units' last K training steps out better than the start
            trained = validation_rollout(module, enc, prep, ids["val"], k, device)
            state = {name: v.detach().clone() for name, v in module.state_dict().items()}
            module.load_state_dict(start_state)
            start = validation_rollout(module, enc, prep, ids["val"], k, device)
            history["rollout_check_mse"] = {"warm start": start, "trained": trained}
            if trained < start or not np.isfinite([trained, start]).all():  # or cannot tell
                module.load_state_dict(state)
            else:
                history["failed_against"].append("warm start rollout")
                history["failed_fit"] = True
        if set(history["failed_against"]) & {"warm start", "warm start rollout"}:
            module.load_state_dict(start_state)
            history["kept"] = "warm start"
    return module, history


def ar_validation_rollout(ar, enc: Encoded, prep, val_ids, k: int, lags: int) -> float:
    """:func:`validation_rollout` of a fitted linear AR (the baseline's own rollout code)."""
    window = _validation_window(enc, prep, val_ids, k)
    if window is None:
        return float("nan")
    x, lengths, gaps, truth, seen = window
    _, rolled = ar_forecast(ar, x, lengths, gaps[:, 1:], prep, lags)
    return float(np.mean(((rolled - truth) ** 2)[seen]))


def _validation_window(enc: Encoded, prep, val_ids, k: int):
    """Inputs of the validation sequences without their last ``k`` steps of ``enc``, their
    lengths, the raw gaps to those steps, the steps' standardized values and observed mask; None
    when no validation sequence is longer than ``k + 1`` or none of those values was observed."""
    val_ids = val_ids[enc.lengths[val_ids] > k + 1]
    if not len(val_ids):
        return None
    f = enc.n_features
    sub = Encoded(
        values=enc.values[val_ids],
        observed=enc.observed[val_ids],
        lengths=enc.lengths[val_ids],
        times=enc.times[val_ids],
        n_features=f,
        n_missing=enc.n_missing[val_ids],
    )
    context = dataclasses.replace(sub, lengths=sub.lengths - k)
    _, gaps = holdout_gaps(sub, k)
    everything = np.arange(len(val_ids))
    x = network_inputs(context, prep, everything, last_gap=gaps[:, 0])
    cols = sub.lengths[:, None] - k + np.arange(k)[None, :]
    rows = everything[:, None]
    truth, seen = sub.values[rows, cols, :f], sub.observed[rows, cols]
    if not seen.any():
        return None
    return x, context.lengths, gaps, truth, seen


def choose_ar_rank(enc: Encoded, prep, ids: dict, lags: int, k: int, ar):
    """The rank of the per-gene AR's cross-gene term, by a temporal holdout inside the training
    window: refit at every rank of :data:`~anndata_rnn.baselines.AR_RANKS` without the last
    ``k`` training steps of every sequence (``k`` = the task's held-out steps, at least 1) and
    keep the rank whose rollout of those steps (training and validation units) has the least
    MSE; then refit at that rank on the whole window (penalty by leave-one-out, as before).

    Leave-one-out over single time points chooses the rank for the times it has seen: measured
    on benchmarks/forecast_scale.py (500 genes), rank 16 rolled the held-out steps out 4× worse
    than rank 0, while its in-window rollout looked 2× better. Returns ``(ar, {rank: mse})``;
    ``ar`` unchanged when it has no cross-gene term to choose or no sequence is long enough."""
    if not getattr(ar, "rank_", 0) and not isinstance(ar, GeneRidgeAR):
        return ar, {}
    k = max(int(k), 1)
    scored = np.concatenate([ids["train"], ids["val"]])
    inner = dataclasses.replace(enc, lengths=np.maximum(enc.lengths - k, 0))
    fitted_on = ids["train"][inner.lengths[ids["train"]] > lags]
    if not len(fitted_on):
        return ar, {}
    errors = {}
    for rank in AR_RANKS:
        fit = fit_linear_ar(inner, prep, fitted_on, lags, "per_gene", ranks=(rank,))
        if fit.rank_ == rank:
            errors[rank] = ar_validation_rollout(fit, enc, prep, scored, k, lags)
    finite = {r: e for r, e in errors.items() if np.isfinite(e)}
    if not finite:
        return ar, errors
    best = min(finite, key=finite.get)
    if best == ar.rank_:
        return ar, errors
    return fit_linear_ar(enc, prep, ids["train"], lags, "per_gene", ranks=(best,)), errors


def validation_rollout(module, enc: Encoded, prep, val_ids, k: int, device) -> float:
    """MSE (standardized) of the rollout of the validation sequences' last ``k`` steps of
    ``enc`` (the training window: the task's held-out steps are already cut off) from the steps
    before them; nan when no validation sequence is longer than ``k + 1`` steps."""
    window = _validation_window(enc, prep, val_ids, k)
    if window is None:
        return float("nan")
    x, lengths, gaps, truth, seen = window
    *_, rolled = rollout(module, x, lengths, gap_channel(prep, gaps[:, 1:]), device)
    return float(np.mean(((rolled - truth) ** 2)[seen]))


#: a forecaster whose loss is not this fraction below its warm start's has not improved on it
WARM_START_TOLERANCE = 0.01


def fit_losses(module, loss_fn, train, val, device, seed) -> dict:
    """Training and validation loss (nan without validation units) of ``module`` as it is."""
    return {
        "train": dataset_loss(module, loss_fn, train, device=device, seed=seed),
        "val": dataset_loss(module, loss_fn, val, device=device, seed=seed)
        if val is not None
        else float("nan"),
    }


def fit_checks(module, loss_fn, train, val, device, seed, history, start_losses) -> dict:
    """Did the training learn anything: against persistence (``fit``'s ``failed_fit`` with the
    persistence loss as the reference, training steps) and, when the network started at the
    ridge fit, against that warm start (validation loss of the weights kept, or training loss
    without validation units: not ``WARM_START_TOLERANCE`` below the start's = not improved).

    Returns the history entries: ``persistence_loss``, ``failed_against`` (a list of
    ``"persistence"`` / ``"warm start"``), ``failed_fit`` (either), ``warm_start_loss`` and
    ``final_loss`` (of the trained weights, on the units the check used, ``warm_start_on``).
    :func:`train_forecaster` then keeps the start when it failed against it (``kept``)."""
    out = {"persistence_loss": history["reference_loss"], "failed_against": []}
    if history["failed_fit"]:
        out["failed_against"].append("persistence")
    if start_losses is not None:
        on = "val" if val is not None and np.isfinite(start_losses["val"]) else "train"
        final = fit_losses(module, loss_fn, train, val, device, seed)[on]
        start = start_losses[on]
        out.update(warm_start_on=on, warm_start_loss=start, final_loss=final)
        if not final < start * (1 - WARM_START_TOLERANCE):
            out["failed_against"].append("warm start")
    out["failed_fit"] = bool(out["failed_against"])
    return out


def fit_cautions(name: str, history: dict, *, warm_start: bool = True) -> list[str]:
    """The cautions of a forecaster's failed fit (``warm_start=False``: only against
    persistence, e.g. for the AR path alone, which is expected to stay near its ridge start)."""
    failed = history.get("failed_against", ["persistence"] * bool(history.get("failed_fit")))
    cautions = []
    if "persistence" in failed:
        cautions.append(
            f"the {name} did not learn more than persistence (training loss "
            f"{history['reference_loss']:.4g} -> {history['final_train_loss']:.4g}): try more "
            "steps (--epochs), another learning rate (--lr) or smaller batches (--batch-size)"
        )
    if warm_start and "warm start rollout" in failed:
        rolled = history["rollout_check_mse"]
        cautions.append(
            f"the {name} rolled the validation units' last steps out no better than its ridge "
            f"start (MSE {rolled['warm start']:.4g} -> {rolled['trained']:.4g}): the start is "
            "kept, it forecasts like the linear AR"
        )
    if warm_start and "warm start" in failed:
        where = "validation" if history.get("warm_start_on") == "val" else "training"
        cautions.append(
            f"the {name} did not improve on its ridge start ({where} loss "
            f"{history['warm_start_loss']:.4g} -> {history['final_loss']:.4g}, not "
            f"{WARM_START_TOLERANCE:.0%} lower): the start is kept, it forecasts like the linear AR"
        )
    return cautions


def write_forecasts(
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
    if index.layout_kind.steps_are_observations:
        rows = scatter_steps(index, per_step)
        if source.use_rep is not None:
            written.append(index.write_matrix(target, f"{key}_forecast", rows.astype(np.float32)))
        else:
            layer = np.full((index.n_obs, target.n_vars), np.nan, dtype=np.float32)
            cols = pd.Index(source.feature_names).get_indexer(prep.features)
            present = cols >= 0
            layer[:, cols[present]] = rows[:, present]
            target.layers[f"{key}_forecast"] = layer
            written.append(f"layers/{key}_forecast")
        hidden = scatter_steps(index, results.hidden).astype(np.float32)
        return [*written, index.write_matrix(target, f"X_{key}", hidden)]

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
        per_var = broadcast_to_rows(index, per_unit)
        written.append(index.write_matrix(target, f"{key}_forecast", per_var))
    embedding = broadcast_to_rows(index, pool_units(index, results.final_hidden))
    return [*written, index.write_matrix(target, f"X_{key}", embedding.astype(np.float32))]


def output_targets(layout: str, key: str) -> list[tuple[str, str]]:
    """The keys a forecaster writes (checked before anything is computed)."""
    rows, mats = Layout.of(layout).unit_axis, Layout.of(layout).unit_matrices
    forecast_matrix = (mats, f"{key}_forecast")
    return [
        (rows, f"{key}_split"),
        ("layers", f"{key}_forecast"),
        forecast_matrix,
        (mats, f"X_{key}"),
        ("uns", key),
    ]


def apply_forecaster(opened, key: str, batch_size: int) -> dict:
    """Forecast with a saved forecaster; writes the same keys as training (no split).

    The held-out steps (``holdout_steps`` of the training run) are forecast again by rollout
    and scored for the RNN and persistence on every sequence of the new data (all of them are
    unseen); the linear AR baseline is not stored in the model file.


    ``opened``: the :class:`~anndata_rnn.runs.OpenedModel` of ``predict`` (model, index, data).
    """
    model, index, source = opened.model, opened.index, opened.source
    config, prep = model.config, model.preprocessor
    holdout_steps = int(config.get("holdout_steps", 0))
    future_times = config.get("future_times") or None
    index.check_holdout(holdout_steps)
    index.check_future_after(future_times)
    full_enc = encode(index, source, prep)
    context_enc = encode(index.truncate(holdout_steps), source, prep) if holdout_steps else full_enc
    results = predict_all(
        model.module,
        prep,
        index,
        full_enc,
        context_enc,
        config,
        future_times,
        opened.device,
        batch_size=batch_size,
    )
    written = write_forecasts(opened.target, index, prep, source, results, key)
    out = {"written": written, "n_imputed": full_enc.imputed, **results.uns_entries()}
    metrics, evaluation = evaluate(
        index, full_enc, prep, results, np.arange(index.n_sequences), holdout_steps
    )
    metrics.pop("linear_ar", None)
    evaluation["units"] = "all"
    out["metrics"] = metrics
    out["evaluation"] = evaluation
    return out


def forecast_config(
    run, spec, train_enc, ar_form, linear_path, residual, horizon, future_times, holdout_steps,
    loss, ar_lags, val_fraction, test_fraction, split_key, seed,
) -> dict:  # fmt: skip
    """The model config of a ``forecast`` run (``run``: its :class:`~anndata_rnn.runs.
    TrainingRun`; the AR form is resolved for the number of features of ``train_enc``)."""
    n_inputs, n_outputs = int(train_enc.values.shape[-1]), int(train_enc.n_features)
    form = resolve_ar_form(ar_form, n_outputs)
    arch = {**run.architecture, "linear_path": bool(linear_path), "ar_form": form}
    return {
        "task": "forecast",
        "layout": spec.layout,
        "keys": spec.model_keys(),
        "architecture": arch,
        "n_inputs": n_inputs,
        "n_outputs": n_outputs,
        "residual": bool(residual),
        "horizon": int(horizon),
        "future_times": [float(t) for t in future_times] if future_times is not None else [],
        "holdout_steps": int(holdout_steps),
        "loss": loss,
        "ar_lags": int(ar_lags),
        "train": {
            **run.train_config.to_dict(),
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "split_key": split_key,
        },
        "seed": seed,
    }


def fit_ar_baseline(train_enc, prep, ids, ar_lags, holdout_steps, arch: dict):
    """The linear AR baseline on the training steps, its rank chosen (per-gene form; recorded
    in ``arch``, the model config's architecture): ``(ar, rank_rollout, rank, n_parameters,
    description)``."""
    form = arch["ar_form"]
    n_inputs, n_outputs = int(train_enc.values.shape[-1]), int(train_enc.n_features)
    ar = fit_linear_ar(train_enc, prep, ids["train"], ar_lags, form)
    ar, rank_rollout = choose_ar_rank(train_enc, prep, ids, ar_lags, holdout_steps, ar)
    rank = int(getattr(ar, "rank_", 0))
    if form == "per_gene":
        arch["ar_rank"] = rank
    n_ar = ar_parameters(form, ar_lags, n_inputs, n_outputs, rank)
    log.info("linear AR: %s, %d parameters (%d features)", form, n_ar, n_outputs)
    ar_description = (
        f"{AR_FORM_TEXT[form]} ridge regression (alpha {ar.alpha_:g}, {n_ar} parameters) of the "
        f"change to the next step on the last {ar_lags} steps"
        + (" and their time gaps" if prep.use_time else "")
        + (f", plus their scores on {rank} principal axes" if rank else "")
    )
    return ar, rank_rollout, rank, n_ar, ar_description


def train_with_ablation(config, train_enc, prep, ids, ar, train_config, *, device, seed, quiet):
    """Train the forecaster ``config`` describes and its AR path alone, the same way from the
    same start: ``((module, history), (alone_module, alone_history))``."""
    arch = config["architecture"]
    trained = {}
    alone = {**config, "architecture": {**arch, "linear_path": True, "recurrent": False}}
    for name, model_config in (("rnn", config), ("linear_path", alone)):
        description = f"forecast ({config['layout']})" if name == "rnn" else "linear path alone"
        trained[name] = train_forecaster(
            model_config,
            train_enc,
            prep,
            ids,
            ar,
            train_config,
            device=device,
            seed=seed,
            quiet=quiet,
            description=description,
        )
    return trained["rnn"], trained["linear_path"]


def score_forecasts(index, full_enc, prep, results, ids, holdout_steps, ar_description):
    """``(metrics, evaluation)`` of the test units (of every unit when only steps are held
    out), logged; empty without either."""
    eval_ids = ids["test"]
    if holdout_steps and not len(eval_ids):
        eval_ids = np.arange(index.n_sequences)
    metrics, evaluation = {}, {}
    if len(eval_ids):
        metrics, evaluation = evaluate(index, full_enc, prep, results, eval_ids, holdout_steps)
        metrics["linear_ar"]["model"] = ar_description
        metrics["linear_path"]["model"] = "the AR path alone, trained the same way"
        metrics["persistence"]["model"] = "the last observed value"
        evaluation["units"] = "test" if len(ids["test"]) else "all"
        log_metrics(metrics, evaluation)
    else:
        log.warning("no test split and no held-out steps: no metrics computed")
    return metrics, evaluation

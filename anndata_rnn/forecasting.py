"""Running a forecaster and its baselines over encoded sequences, and scoring the forecasts.

The protocol (the same for both layouts):

- units (series for obs-series, genes for var-series) are split into train / val / test;
- with ``holdout_steps=K`` the last K steps of *every* sequence are cut off before anything is
  fitted (standardization, network, baselines); the network then forecasts them by
  autoregressive rollout from the steps before, and the metrics are computed on those steps of
  the test units (of all units when there is no test split);
- without held-out steps the metrics are one-step-ahead forecasts (teacher forcing) on every step
  but the first of the test units;
- the network is trained on one-step-ahead targets (MSE or Huber loss, masked where a value was
  missing), with early stopping on the validation units;
- persistence (the last observed value) and a linear autoregression run on the same split and
  steps.

One-step forecasts along every sequence (teacher forcing), autoregressive rollouts of held-out
last steps and of future steps beyond each sequence's end, for the network, persistence and the
linear AR; all returned in the input's units (standardization undone).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from sklearn.linear_model import RidgeCV

from .baselines import ar_forecast
from .errors import InputError
from .metrics import regression_metrics
from .networks.forecaster import rollout
from .preprocessing import (
    Encoded,
    Preprocessor,
    future_gaps,
    gap_channel,
    holdout_gaps,
    network_inputs,
)
from .sequences import SequenceIndex

log = logging.getLogger("anndata_rnn")

LOSSES = ("mse", "huber")
FORECAST_LAYOUTS = ("obs-series", "var-series")


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

    f_times, f_gaps = future_gaps(full, future_times, max(horizon, 1))
    x_full = network_inputs(full, prep, all_ids, last_gap=f_gaps[:, 0])
    one_step, hidden, final, future = rollout(
        module, x_full, full.lengths, gap_channel(prep, f_gaps[:, 1:]), device, batch_size
    )
    one = {"rnn": units(one_step), "persistence": units(full.values[..., :f])}
    if ar is not None:
        one["linear_ar"] = units(
            ar_forecast(ar, x_full, full.lengths, f_gaps[:, :0], prep, lags)[0]
        )

    holdout = {}
    h_times = np.zeros((n, 0))
    if k:
        h_times, h_gaps = holdout_gaps(full, k)
        x_fit = network_inputs(context_enc, prep, all_ids, last_gap=h_gaps[:, 0])
        *_, rolled = rollout(
            module, x_fit, context_enc.lengths, gap_channel(prep, h_gaps[:, 1:]), device, batch_size
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
    if layout == "var-series" and use_rep is not None:
        raise InputError("use_rep needs layout obs-series (var-series reads genes)")

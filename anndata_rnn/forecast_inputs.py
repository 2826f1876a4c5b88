"""The forecaster's inputs and targets from encoded sequences: each step carries the time gap to
the step it predicts (not the gap before it, as :func:`~anndata_rnn.preprocessing.encode`
gives), and the times and gaps of held-out and future steps."""

from __future__ import annotations

import numpy as np

from .preprocessing import Encoded, Preprocessor, gap_channel


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
    gap[np.arange(len(ids)), lengths - 1] = gap_channel(prep, last)
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


def future_gaps(enc: Encoded, future_times, horizon: int) -> tuple[np.ndarray, np.ndarray]:
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


def holdout_gaps(full: Encoded, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Times ``(n, k)`` of the held-out last steps and the gaps leading to each."""
    n = len(full.lengths)
    cols = full.lengths[:, None] - k + np.arange(k)[None, :]
    times = full.times[np.arange(n)[:, None], cols]
    before = full.times[np.arange(n)[:, None], cols - 1]
    return times, times - before

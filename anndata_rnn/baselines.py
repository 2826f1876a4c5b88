"""The honest baselines every task reports beside its network, on the same inputs and split.

- classification: logistic regression (scikit-learn) on the flattened standardized inputs, and
  for one label per sequence 1-nearest-neighbour (Euclidean) on the same inputs;
- forecasting: a linear autoregression (ridge on the last ``lags`` steps and time gaps);
- embedding: PCA with as many components as the latent + k-means.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import pairwise_distances_argmin
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from .clustering import cluster_matrix
from .preprocessing import Encoded, Preprocessor, gap_channel, network_inputs
from .sequences import Labels, SequenceIndex, pool_units
from .splits import random_subset

#: lazily encoded values (streamed training): the baseline is fitted on at most this many
#: training sequences and predicts this many at a time
LAZY_FIT_SEQUENCES = 20_000
LAZY_BATCH = 4096


def logistic_baseline(values, y, train_ids, labels: Labels, seed: int) -> tuple[np.ndarray, int]:
    """Logistic regression on the same preprocessed inputs and split; proba like the RNN's, and
    the number of training sequences it was fitted on (all: ``len(train_ids)``).

    ``values`` is a tensor, or lazily encoded sequences (streamed training, unit-level labels):
    then the fit uses a seeded random subset of at most :data:`LAZY_FIT_SEQUENCES` labelled
    training sequences and prediction runs :data:`LAZY_BATCH` sequences at a time.
    """
    targets = y.numpy()
    model = LogisticRegression(max_iter=1000, random_state=seed)
    if not isinstance(values, torch.Tensor):
        return _lazy_logistic(model, values, targets, train_ids, labels, seed)
    x = values.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if labels.level == "unit":
            flat = x.reshape(len(x), -1)
            chosen = train_ids[targets[train_ids] >= 0]
            model.fit(flat[chosen], targets[chosen])
            raw = model.predict_proba(flat)
        else:
            train_mask = np.zeros(targets.shape, dtype=bool)
            train_mask[train_ids] = targets[train_ids] >= 0
            model.fit(x[train_mask], targets[train_mask])
            raw = model.predict_proba(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:2], -1)
    return _full_proba(model, raw, labels), len(train_ids)


def _full_proba(model, raw: np.ndarray, labels: Labels) -> np.ndarray:
    """Columns for every class (a class absent from the training labels gets 0)."""
    proba = np.zeros((*raw.shape[:-1], len(labels.classes)))
    proba[..., model.classes_] = raw
    return proba


def _lazy_logistic(model, values, targets, train_ids, labels: Labels, seed: int):
    if labels.level != "unit":
        raise ValueError("lazily encoded values need unit-level labels")
    labelled = train_ids[targets[train_ids] >= 0]
    chosen = random_subset(labelled, LAZY_FIT_SEQUENCES, seed)

    def flat(positions):
        return np.asarray(values[positions]).reshape(len(positions), -1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(flat(chosen), targets[chosen])
    everything = np.arange(len(values))
    raw = np.concatenate(
        [
            model.predict_proba(flat(everything[start : start + LAZY_BATCH]))
            for start in range(0, len(values), LAZY_BATCH)
        ]
    )
    fitted_on = len(chosen) if len(chosen) < len(labelled) else len(train_ids)
    return _full_proba(model, raw, labels), fitted_on


def nearest_neighbour_baseline(
    values, y, fit_ids, test_ids, labels: Labels, seed: int
) -> tuple[np.ndarray, int] | None:
    """1-nearest-neighbour (scikit-learn ``KNeighborsClassifier(1)``, Euclidean) on the same
    preprocessed sequences as the logistic baseline: standardized (or z-scored per sequence
    with ``scale="sequence"``), padded with zeros to the same length and flattened. The
    strawman of time-series classification; unit-level labels only (None otherwise). It holds
    the labelled ``fit_ids`` (the task passes training and validation sequences: 1-NN has
    nothing to tune, so the network's early-stopping split is training data for it).

    Returns ``(proba, fitted_on)``: one-hot probabilities of the ``test_ids`` sequences (NaN
    for the others: only the test split is scored) and the number of training sequences it
    holds (all: ``len(fit_ids)``). Lazily encoded values (streamed training) use a seeded random
    subset of at most :data:`LAZY_FIT_SEQUENCES` labelled sequences and predict :data:`LAZY_BATCH`
    sequences at a time, like :func:`logistic_baseline`.
    """
    if labels.level != "unit":
        return None
    targets = y.numpy()
    labelled = fit_ids[targets[fit_ids] >= 0]
    lazy = not isinstance(values, torch.Tensor)
    chosen = random_subset(labelled, LAZY_FIT_SEQUENCES, seed) if lazy else labelled

    def flat(positions):
        taken = values[positions] if lazy else values.numpy()[positions]
        return np.asarray(taken, dtype=np.float32).reshape(len(positions), -1)

    model = KNeighborsClassifier(n_neighbors=1, algorithm="brute")
    model.fit(flat(chosen), targets[chosen])
    proba = np.full((len(values), len(labels.classes)), np.nan)
    for start in range(0, len(test_ids), LAZY_BATCH):
        batch = test_ids[start : start + LAZY_BATCH]
        proba[batch] = _full_proba(model, model.predict_proba(flat(batch)), labels)
    fitted_on = len(chosen) if len(chosen) < len(labelled) else len(fit_ids)
    return proba, fitted_on


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
    """The linear AR's one-step forecasts along ``x`` and its rollout (like :func:`~anndata_rnn.networks.forecaster.rollout`)."""
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
    gaps = gap_channel(prep, later_gaps)
    for j in range(later_gaps.shape[1]):
        new = step if not prep.use_time else np.concatenate([step, gaps[:, j, None]], axis=1)
        window = np.concatenate([new[:, None], window[:, :-1]], axis=1)
        step = window[:, 0, :f] + ar.predict(window.reshape(n, -1)).reshape(n, f)
        rolled.append(step.astype(np.float32))
    return one_step, np.stack(rolled, axis=1)


def pca_kmeans_baseline(features: np.ndarray, n_components: int, n_clusters: int, seed: int):
    """z-scored features -> PCA (as many components as the latent) -> k-means."""
    scaled = StandardScaler().fit_transform(np.asarray(features, dtype=np.float64))
    n_components = max(1, min(n_components, *scaled.shape))
    pca = PCA(n_components=n_components, random_state=seed)
    scores = pca.fit_transform(scaled)
    codes, _ = cluster_matrix(scores, method="kmeans", n_clusters=n_clusters, seed=seed)
    return scores, codes, n_components, float(pca.explained_variance_ratio_.sum())


def embedding_baseline(
    index: SequenceIndex, values, members, steps, n_components, n_clusters, seed
):
    """The PCA + k-means baseline of an embedding on the clustered ``members`` (units, or the
    ``steps`` positions at step level): ``(scores, codes, n_components, explained, fitted_on)``.

    ``values`` is an array, or lazily encoded sequences (streamed profile training, one sequence
    per unit): then the scaler, PCA and k-means are fitted on a seeded random
    :data:`LAZY_FIT_SEQUENCES` members and every member is projected and assigned to its nearest
    centre :data:`LAZY_BATCH` at a time.
    """

    def flat(positions):
        return np.asarray(values[positions], dtype=np.float64).reshape(len(positions), -1)

    if isinstance(values, np.ndarray):
        features = unit_features(index, values)[members] if steps is None else values[steps]
        return (*pca_kmeans_baseline(features, n_components, n_clusters, seed), len(members))
    if len(members) <= LAZY_FIT_SEQUENCES:  # small enough: exactly the in-memory baseline
        return (*pca_kmeans_baseline(flat(members), n_components, n_clusters, seed), len(members))
    chosen = random_subset(members, LAZY_FIT_SEQUENCES, seed)
    sample = flat(chosen)
    scaler = StandardScaler().fit(sample)
    scaled = scaler.transform(sample)
    n_components = max(1, min(n_components, *scaled.shape))
    pca = PCA(n_components=n_components, random_state=seed).fit(scaled)
    _, centres = cluster_matrix(
        pca.transform(scaled), method="kmeans", n_clusters=n_clusters, seed=seed
    )
    del sample, scaled
    scores = np.concatenate(
        [
            pca.transform(scaler.transform(flat(members[start : start + LAZY_BATCH])))
            for start in range(0, len(members), LAZY_BATCH)
        ]
    )
    codes = pairwise_distances_argmin(scores, centres)
    return scores, codes, n_components, float(pca.explained_variance_ratio_.sum()), len(chosen)


def unit_features(index: SequenceIndex, values: np.ndarray) -> np.ndarray:
    """Flattened preprocessed inputs per unit (a gene's sequences over its series concatenated)."""
    order = np.argsort(index.unit, kind="stable")
    counts = np.bincount(index.unit, minlength=index.n_units)
    flat = values.reshape(len(values), -1)[order]
    if (counts == counts[0]).all():
        return flat.reshape(index.n_units, -1)
    return pool_units(index, values.reshape(len(values), -1))  # unequal: mean over sequences

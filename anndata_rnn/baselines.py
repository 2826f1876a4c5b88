"""The honest baselines every task reports beside its network, on the same inputs and split.

- classification: logistic regression (scikit-learn) on the flattened standardized inputs, and
  for one label per sequence 1-nearest-neighbour (Euclidean) on the same inputs;
- forecasting: a linear autoregression (ridge on the last ``lags`` steps and time gaps), dense
  (every gene from every gene's lags) on few genes, per gene (each gene from its own lags) on
  many (:data:`DENSE_AR_MAX_GENES`);
- embedding: PCA with as many components as the latent + k-means (clusters), and the PCA of the
  flattened sequences fitted on the training units (reconstruction; the autoencoder's start).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import timing
from .clustering import cluster_matrix
from .forecast_inputs import network_inputs
from .preprocessing import Encoded, Preprocessor, gap_channel
from .sequences import Labels, SequenceIndex, pool_units
from .splits import random_subset

if TYPE_CHECKING:  # (scikit-learn loads when a baseline is fitted, not at import)
    from sklearn.linear_model import RidgeCV

#: lazily encoded values (streamed training): the baseline is fitted on at most this many
#: training sequences and predicts this many at a time
LAZY_FIT_SEQUENCES = 20_000
LAZY_BATCH = 4096

#: the linear AR (baseline and the forecaster's AR path) is dense up to this many genes and per
#: gene above (``ar_form="auto"``). Measured (benchmarks/forecast_scale.py, shared 2-core
#: machine, one thread): one step ahead the dense form is more accurate at 128-512 genes, in
#: held-out rollouts less; its run time grows as genes² (4.6x the per-gene one at 512); README.
DENSE_AR_MAX_GENES = 256
#: the ridge penalties tried (the same for both forms; chosen by leave-one-out error)
AR_ALPHAS = np.logspace(-3, 3, 7)
#: ranks of the per-gene AR's cross-gene term tried (chosen by leave-one-out error with alpha)
AR_RANKS = (0, 2, 4, 8, 16)
#: genes solved together by the per-gene ridge (bounds its memory)
GENE_BLOCK = 512
#: and at most about this many values of their design (samples × genes × coefficients)
GENE_BLOCK_VALUES = 4_000_000


@timing.timed("baselines")
def logistic_baseline(values, y, train_ids, labels: Labels, seed: int, *, with_model: bool = False):
    """Logistic regression on the same preprocessed inputs and split; proba like the RNN's, and
    the number of training sequences it was fitted on (all: ``len(train_ids)``); with
    ``with_model`` also the fitted ``LogisticRegression`` (the classifier's start).

    ``values`` is a tensor, or lazily encoded sequences (streamed training, unit-level labels):
    then the fit uses a seeded random subset of at most :data:`LAZY_FIT_SEQUENCES` labelled
    training sequences and prediction runs :data:`LAZY_BATCH` sequences at a time.
    """
    targets = y.numpy()
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=1000, random_state=seed)
    if not isinstance(values, torch.Tensor):
        proba, n = _lazy_logistic(model, values, targets, train_ids, labels, seed)
        return (proba, n, model) if with_model else (proba, n)
    x = values.numpy()
    with warnings.catch_warnings():
        from sklearn.exceptions import ConvergenceWarning

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
    proba = _full_proba(model, raw, labels)
    return (proba, len(train_ids), model) if with_model else (proba, len(train_ids))


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
        from sklearn.exceptions import ConvergenceWarning

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


@timing.timed("baselines")
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

    from sklearn.neighbors import KNeighborsClassifier

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


def resolve_ar_form(ar_form: str, n_genes: int) -> str:
    """``"auto"`` -> ``"dense"`` up to :data:`DENSE_AR_MAX_GENES` genes, else ``"per_gene"``."""
    if ar_form == "auto":
        return "dense" if n_genes <= DENSE_AR_MAX_GENES else "per_gene"
    return ar_form


def ar_parameters(ar_form: str, lags: int, n_inputs: int, n_outputs: int, rank: int = 0) -> int:
    """Coefficients, loadings and intercepts of a linear AR of that form (the network's AR path
    as well): ``(lags * n_inputs + 1) * genes`` dense, ``(lags * (c + rank) + rank + 1) * genes``
    per gene."""
    if ar_form == "dense":
        return (lags * n_inputs + 1) * n_outputs
    return (lags * (1 + int(n_inputs > n_outputs) + rank) + rank + 1) * n_outputs


@timing.timed("baselines")
def fit_linear_ar(
    enc: Encoded,
    prep: Preprocessor,
    train_ids: np.ndarray,
    lags: int,
    form: str = "dense",
    ranks=None,
):
    """Ridge on the last ``lags`` inputs (features + gap to the next step) -> change to t + 1.

    ``form="dense"``: one scikit-learn ``RidgeCV`` from every input's lags to every gene
    (``lags * n_inputs`` coefficients per gene); ``"per_gene"``: :class:`GeneRidgeAR`, each gene
    from its own lags and the time gaps. Both choose the penalty among :data:`AR_ALPHAS` by
    leave-one-out error, and have ``coef_``, ``intercept_``, ``alpha_`` and ``predict``;
    ``ranks`` are the cross-gene ranks the per-gene form may choose from (default
    :data:`AR_RANKS`).
    """
    x = network_inputs(enc, prep, train_ids)
    f = enc.n_features
    lengths = enc.lengths[train_ids]
    valid = np.arange(x.shape[1])[None, :] < (lengths[:, None] - 1)
    positions = np.nonzero(valid)
    seq, t = positions
    change = enc.values[train_ids][seq, t + 1, :f] - x[seq, t, :f]
    if form == "per_gene":
        return GeneRidgeAR(lags, x.shape[-1], f, ranks=ranks).fit(x, positions, change)
    if form != "dense":
        raise ValueError(f"unknown AR form {form!r}")
    design = _lag_design(x, positions, lags)
    from sklearn.linear_model import RidgeCV

    model = RidgeCV(alphas=AR_ALPHAS)
    model.fit(design, change)
    return model


class GeneRidgeAR:
    """Per-gene ridge autoregression: gene ``g``'s change to the next step from its own last
    ``lags`` values and the last ``lags`` time gaps (when the inputs carry a gap channel), with
    per-gene coefficients and intercept, plus a low-rank cross-gene term: the last ``lags``
    steps' scores on the first ``rank`` principal axes of the training inputs (scikit-learn PCA),
    with per-gene coefficients.

    numpy solves the normal equations of all genes of a block at once, eigendecomposed, so every
    penalty and its exact leave-one-out error cost one pass. The rank (among :data:`AR_RANKS`,
    below the number of genes and of samples) and one penalty for all genes (among
    :data:`AR_ALPHAS`, as ``RidgeCV`` on many targets) are the pair with the least total
    leave-one-out squared error (the principal axes are fitted once, on all training samples).
    ``coef_`` ``(n_genes, lags * (c + rank_))`` in the layout of
    :class:`~anndata_rnn.networks.forecaster.GeneAR` (per lag: value, gap, scores),
    ``loadings_`` ``(n_genes, rank_)``; memory and time linear in the genes.
    """

    def __init__(self, lags: int, n_inputs: int, n_genes: int, alphas=AR_ALPHAS, ranks=None):
        self.lags, self.n_inputs, self.n_genes = int(lags), int(n_inputs), int(n_genes)
        self.channels = 1 + int(n_inputs > n_genes)
        self.alphas = np.asarray(alphas, dtype=np.float64)
        self.ranks = tuple(AR_RANKS if ranks is None else ranks)

    def _lagged(self, x, positions, genes: slice, loadings) -> np.ndarray:
        """``(samples, genes, lags * (c + rank))``: each gene's own lags, the gaps' lags and the
        scores' lags."""
        seq, t = positions
        cols = []
        for j in range(self.lags):
            step = x[seq, np.maximum(t - j, 0)]
            values = step[:, genes]
            shape = values.shape
            cols.append(values[..., None])
            if self.channels == 2:
                cols.append(np.broadcast_to(step[:, self.n_genes, None, None], shape + (1,)))
            if loadings.shape[1]:
                scores = step[:, : self.n_genes] @ loadings  # (samples, rank)
                cols.append(np.broadcast_to(scores[:, None, :], shape + (loadings.shape[1],)))
        return np.concatenate(cols, axis=-1).astype(np.float64)

    def fit(self, x: np.ndarray, positions, change: np.ndarray) -> GeneRidgeAR:
        """Fit on the inputs ``x`` ``(n, steps, n_inputs)`` at ``positions`` (sequence, step)
        -> ``change`` ``(samples, n_genes)``."""
        n = len(positions[0])
        ranks = sorted({r for r in self.ranks if 0 <= r < min(self.n_genes, n)}) or [0]
        axes = np.zeros((self.n_genes, 0))
        if ranks[-1]:
            rows = np.asarray(x[positions][:, : self.n_genes], dtype=np.float64)
            from sklearn.decomposition import PCA

            axes = PCA(n_components=ranks[-1], svd_solver="full").fit(rows).components_.T
        best = None
        for rank in ranks:
            fitted = self._fit_rank(x, positions, change, axes[:, :rank])
            if best is None or fitted["loo"].min() < best["loo"].min():
                best = fitted
        a = int(np.argmin(best["loo"]))
        self.rank_, self.loadings_ = best["rank"], best["loadings"]
        self.alpha_ = float(self.alphas[a])
        self.coef_ = best["coef"][:, a]
        self.loo_error_ = best["loo"] / max(n * self.n_genes, 1)
        self.intercept_ = change.mean(axis=0) - np.einsum("gi,gi->g", best["means"], self.coef_)
        return self

    def _fit_rank(self, x, positions, change, loadings) -> dict:
        n = len(positions[0])
        p = self.lags * (self.channels + loadings.shape[1])
        coef = np.zeros((self.n_genes, len(self.alphas), p))
        means = np.zeros((self.n_genes, p))
        loo = np.zeros(len(self.alphas))
        block = max(1, min(GENE_BLOCK, GENE_BLOCK_VALUES // max(n * p, 1)))
        for start in range(0, self.n_genes, block):
            genes = slice(start, min(start + block, self.n_genes))
            design = self._lagged(x, positions, genes, loadings)  # (n, g, p)
            y = change[:, genes].astype(np.float64)
            means[genes] = design.mean(axis=0)
            design -= means[genes]
            y = y - y.mean(axis=0)
            gram = np.einsum("ngi,ngj->gij", design, design)
            eigval, eigvec = np.linalg.eigh(gram)  # (g, p), (g, p, p)
            rotated = np.einsum("ngi,gij->ngj", design, eigvec)  # design in the eigenbasis
            del design
            projected = np.einsum("ngj,ng->gj", rotated, y)
            squared = rotated**2
            for a, alpha in enumerate(self.alphas):
                shrink = 1.0 / (np.maximum(eigval, 0.0) + alpha)
                coef[genes, a] = np.einsum("gij,gj->gi", eigvec, projected * shrink)
                fitted = np.einsum("ngj,gj->ng", rotated, projected * shrink)
                # leverage of each sample (the intercept's 1/n included): exact leave-one-out
                leverage = np.einsum("ngj,gj->ng", squared, shrink) + 1.0 / max(n, 1)
                leverage = np.minimum(leverage, 1 - 1e-9)
                loo[a] += float((((y - fitted) / (1 - leverage)) ** 2).sum())
        return {
            "rank": loadings.shape[1],
            "loadings": loadings,
            "coef": coef,
            "means": means,
            "loo": loo,
        }

    def predict(self, design: np.ndarray) -> np.ndarray:
        """The change of every gene ``(n, n_genes)`` from the lag design ``(n, lags * n_inputs)``
        (``[x_t, x_{t-1}, ...]``, as the dense ridge reads it)."""
        lagged = np.asarray(design, dtype=np.float64).reshape(len(design), self.lags, self.n_inputs)
        f, c = self.n_genes, self.channels
        weight = self.coef_.reshape(f, self.lags, c + self.rank_)
        values = lagged[..., :f]
        out = np.einsum("njg,gj->ng", values, weight[..., 0])
        if c == 2:
            out += lagged[..., f] @ weight[..., 1].T
        if self.rank_:
            scores = values @ self.loadings_  # (n, lags, rank)
            out += scores.reshape(len(design), -1) @ weight[..., c:].reshape(f, -1).T
        return out + self.intercept_


@timing.timed("baselines")
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


@timing.timed("baselines")
def pca_kmeans_baseline(features: np.ndarray, n_components: int, n_clusters: int, seed: int):
    """z-scored features -> PCA (as many components as the latent) -> k-means."""
    from sklearn.preprocessing import StandardScaler

    scaled = StandardScaler().fit_transform(np.asarray(features, dtype=np.float64))
    n_components = max(1, min(n_components, *scaled.shape))
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_components, random_state=seed)
    scores = pca.fit_transform(scaled)
    codes, _ = cluster_matrix(scores, method="kmeans", n_clusters=n_clusters, seed=seed)
    return scores, codes, n_components, float(pca.explained_variance_ratio_.sum())


@timing.timed("baselines")
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
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(sample)
    scaled = scaler.transform(sample)
    n_components = max(1, min(n_components, *scaled.shape))
    from sklearn.decomposition import PCA

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
    from sklearn.metrics import pairwise_distances_argmin

    codes = pairwise_distances_argmin(scores, centres)
    return scores, codes, n_components, float(pca.explained_variance_ratio_.sum()), len(chosen)


@dataclass
class PCAReconstruction:
    """The PCA of the flattened sequences (:func:`pca_reconstruction`)."""

    components: np.ndarray  # (k, max_steps * n_outputs); k = 0: the training mean alone
    mean: np.ndarray  # (max_steps * n_outputs,)
    errors: np.ndarray  # every sequence's reconstruction MSE
    explained: float  # fraction of the training sequences' variance the k components keep
    fitted_on: int  # training sequences the PCA was fitted on


@timing.timed("baselines")
def pca_reconstruction(values, lengths, train_ids, n_outputs, n_components, seed):
    """PCA of the flattened sequences, fitted on the training sequences; every sequence's
    reconstruction error, computed as the autoencoder's (mean over real steps of the mean
    squared error over the ``n_outputs`` reconstructed channels).

    A sequence is flattened as the autoencoder's linear path reads it: the first ``n_outputs``
    channels (the time-gap channel is input only) of its ``values.shape[1]`` steps, padding
    zero. ``n_components`` is capped at the training sequences - 1 and the flattened size.
    ``values`` is an array / tensor, or lazily encoded sequences (streamed training). Either way
    the PCA is fitted on at most :data:`LAZY_FIT_SEQUENCES` training sequences (a seeded random
    subset; all of them when there are fewer) and applied :data:`LAZY_BATCH` sequences at a
    time, so a streamed run equals the in-memory one and memory stays bounded.
    """
    lengths = np.asarray(lengths)
    steps = int(values.shape[1])

    def flat(positions, dtype=np.float64):
        x = np.asarray(values[positions], dtype=dtype)[..., :n_outputs]
        real = np.arange(steps)[None, :] < lengths[positions][:, None]
        return (x * real[..., None]).reshape(len(positions), -1), real

    chosen = random_subset(np.asarray(train_ids), LAZY_FIT_SEQUENCES, seed)
    # float32 (the encoded precision), filled LAZY_BATCH sequences at a time and centred in
    # place by the PCA: one copy of the sample in memory
    sample = np.empty((len(chosen), steps * n_outputs), dtype=np.float32)
    for start in range(0, len(chosen), LAZY_BATCH):
        part = chosen[start : start + LAZY_BATCH]
        sample[start : start + len(part)] = flat(part, np.float32)[0]
    k = max(0, min(int(n_components), len(chosen) - 1, sample.shape[1]))
    if k:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=k, random_state=seed, copy=False).fit(sample)
        components, mean = pca.components_, pca.mean_
        explained = float(pca.explained_variance_ratio_.sum())
    else:  # one training sequence: the mean is all a PCA can keep
        components, mean, explained = np.zeros((0, sample.shape[1])), sample.mean(0), 0.0
    components, mean = components.astype(np.float64), mean.astype(np.float64)
    del sample
    errors = []
    for start in range(0, len(values), LAZY_BATCH):
        x, real = flat(np.arange(start, min(start + LAZY_BATCH, len(values))))
        rebuilt = (x - mean) @ components.T @ components + mean
        squared = ((rebuilt - x) ** 2).reshape(len(x), steps, -1).mean(axis=2)
        errors.append((squared * real).sum(1) / np.maximum(real.sum(1), 1))
    return PCAReconstruction(components, mean, np.concatenate(errors), explained, len(chosen))


def unit_features(index: SequenceIndex, values: np.ndarray) -> np.ndarray:
    """Flattened preprocessed inputs per unit (a gene's sequences over its series concatenated)."""
    order = np.argsort(index.unit, kind="stable")
    counts = np.bincount(index.unit, minlength=index.n_units)
    flat = values.reshape(len(values), -1)[order]
    if (counts == counts[0]).all():
        return flat.reshape(index.n_units, -1)
    return pool_units(index, values.reshape(len(values), -1))  # unequal: mean over sequences

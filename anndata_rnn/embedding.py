"""The autoencoder of ``embed`` from its PCA start, beside the linear path alone and PCA.

The PCA of the flattened sequences (:func:`~anndata_rnn.baselines.pca_reconstruction`, fitted on
the training units) is both the baseline and the start: the linear path of the model and of the
ablation (the linear path alone) is set to its loadings, the recurrent part starts at zero, and
the start competes on the validation units (kept unless training beats it). All three are scored
on the same held-out units with the same per-sequence error.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from .baselines import PCAReconstruction, embedding_baseline, pca_reconstruction
from .clustering import (
    cluster_matrix,
    clustered_members,
    clustered_truth,
    level_name,
    nearest_centre,
    write_clusters,
)
from .errors import InputError
from .metrics import clustering_metrics, reconstruction_metrics
from .networks import build_module
from .networks.autoencoder import embed_sequences, masked_mse
from .sequences import (
    Layout,
    SequenceIndex,
    broadcast_to_rows,
    pool_units,
    read_labels,
    scatter_steps,
)
from .training import TrainConfig, dataset_loss, fit, take

log = logging.getLogger("anndata_rnn")


@dataclass
class FittedEmbedding:
    """What :func:`fit_embedding` returns."""

    module: object  # the model (recurrent part + linear path, or the recurrence alone)
    history: dict
    latent: np.ndarray  # per sequence
    step_latent: np.ndarray | None  # per step (with ``steps``)
    metrics: dict  # rnn, linear_path, pca: reconstruction (see reconstruction_results)
    record: dict  # uns[key]["reconstruction"]
    notes: list[str]

    @property
    def latents(self) -> tuple:
        """``(latent, step_latent)``."""
        return self.latent, self.step_latent


def fit_embedding(
    config: dict,
    values,
    lengths,
    ids: dict,
    train_config: TrainConfig,
    *,
    device,
    seed: int,
    quiet: bool,
    steps: bool,
) -> FittedEmbedding:
    """Fit the PCA of the flattened sequences on the training sequences, train the model
    ``config`` describes and the linear path alone from it (:func:`train_autoencoders`), embed
    every sequence and score all three (:func:`reconstruction_results`)."""
    arch = config["architecture"]
    n_latent = int(arch["n_latent"])
    sizes = (len(ids["train"]), len(ids["val"]), len(ids["test"]), arch["n_outputs"], n_latent)
    log.info("embed: %d train, %d val, %d test sequences, %d features, latent %d", *sizes)
    pca = pca_reconstruction(values, lengths, ids["train"], arch["n_outputs"], n_latent, seed)
    trained = train_autoencoders(
        config, values, lengths, ids, pca, train_config, device=device, seed=seed, quiet=quiet,
        description=f"embed ({config['layout']})",
    )  # fmt: skip
    (module, history), (alone, alone_history) = trained["rnn"], trained["linear_path"]
    latent, step_latent, errors = embed_sequences(module, values, lengths, device, steps=steps)
    alone_errors = embed_sequences(alone, values, lengths, device)[2]
    start = (
        f"PCA ({len(pca.components)} components) fitted on {pca.fitted_on} training sequences"
        if arch.get("linear_path")
        else "random (linear_path=False); the linear path alone starts at PCA"
    )
    metrics, record, notes = reconstruction_results(
        {"rnn": errors, "linear_path": alone_errors},
        {"rnn": history, "linear_path": alone_history},
        pca,
        ids,
        start,
    )
    return FittedEmbedding(module, history, latent, step_latent, metrics, record, notes)


def compare_clusters(
    index: SequenceIndex, values, members, steps, x, codes, truth, classes, n_components, seed
):
    """``(rnn metrics, baseline metrics, reports)``: the clusters ``codes`` of ``x`` and those
    of PCA + k-means with as many clusters (:func:`~anndata_rnn.baselines.embedding_baseline`)
    on the same ``members``, against the known groups ``truth`` when given."""
    n_found = int(codes.max()) + 1
    scores, base_codes, n_components, explained, fitted_on = embedding_baseline(
        index, values, members, steps, n_components, n_found, seed
    )
    rnn_metrics, rnn_report = clustering_metrics(x, codes, truth, classes, seed)
    base_metrics, base_report = clustering_metrics(scores, base_codes, truth, classes, seed)
    baseline = {
        **base_metrics,
        "explained_variance": explained,
        "model": f"PCA ({n_components} components of the z-scored inputs) + k-means (sklearn)"
        + (
            f" (fitted on a random {fitted_on} of {len(members)})"
            if fitted_on < len(members)
            else ""
        ),
    }
    reports = {} if rnn_report is None else {"rnn": rnn_report, "baseline": base_report}
    return rnn_metrics, baseline, reports


def loss(net, batch):
    """The autoencoder's loss: mean squared error on the real steps."""
    return masked_mse(net(*batch)[0], *batch)


def train_autoencoders(
    config: dict,
    values,
    lengths,
    ids: dict,
    pca: PCAReconstruction,
    train_config: TrainConfig,
    *,
    device,
    seed: int,
    quiet: bool,
    description: str,
) -> dict:
    """``{"rnn": (module, history), "linear_path": (module, history)}``: the model ``config``
    describes and the linear path alone, each trained on ``ids["train"]`` with early stopping on
    ``ids["val"]``; a linear path starts at ``pca`` and its start is a candidate for the best.

    A model that learned nothing predicts zero (the training mean of standardized values): its
    loss is the reference of the failed-fit check, measured once before the PCA start.
    """
    arch = config["architecture"]
    alone = {**config, "architecture": {**arch, "linear_path": True, "recurrent": False}}
    train = (take(values, ids["train"]), lengths[ids["train"]])
    val = (take(values, ids["val"]), lengths[ids["val"]]) if len(ids["val"]) else None
    trained, reference = {}, None
    for name, model_config in (("rnn", config), ("linear_path", alone)):
        module = build_module("embed", config["n_inputs"], model_config)
        warm = module.linear is not None
        if warm:
            if reference is None:
                reference = dataset_loss(module, loss, train, device=device, seed=seed)
            module.linear.set_pca(pca.components, pca.mean)
        history = fit(
            module,
            loss,
            train,
            val,
            train_config,
            device=device,
            seed=seed,
            quiet=quiet,
            description=description if name == "rnn" else "linear path alone",
            initial_candidate=warm,
            reference_loss=reference if warm else None,
        )
        trained[name] = (module, history)
    return trained


def warm_start(history: dict) -> dict:
    """Which weights a fit kept and its validation loss start -> best (``uns`` has no null)."""
    if "initial_val_loss" not in history:
        no_val = "best_val_loss" not in history
        return {"kept": "trained" + (" (no validation units)" * no_val)}
    return {
        "kept": "start" if history["best_epoch"] == 0 else "trained",
        "val_loss_start": float(history["initial_val_loss"]),
        "val_loss_best": float(history["best_val_loss"]),
    }


def reconstruction_results(errors: dict, histories: dict, pca: PCAReconstruction, ids, start):
    """``(metrics, record, notes)`` of the reconstruction: per model (``errors`` and
    ``histories`` keyed ``rnn``, ``linear_path``; ``pca``) ``reconstruction_mse`` on the held-out
    units (test; without test units, validation; else training, which the record and a warning
    say) and ``train_reconstruction_mse``; the record says which units were scored and, per
    trained model, which weights were kept (:func:`warm_start`); ``start`` describes the
    model's start."""
    scored_on = next(name for name in ("test", "val", "train") if len(ids[name]))
    n_pca = len(pca.components)
    described = {
        "linear_path": "the linear path alone (PCA start), trained the same way",
        "pca": f"PCA ({n_pca} components of the flattened sequences, sklearn)"
        + (
            f" (fitted on a random {pca.fitted_on} of {len(ids['train'])})"
            if pca.fitted_on < len(ids["train"])
            else ""
        ),
    }
    metrics = {}
    for name, model_errors in (*errors.items(), ("pca", pca.errors)):
        metrics[name] = {
            **reconstruction_metrics(model_errors, ids[scored_on]),
            "train_reconstruction_mse": float(model_errors[ids["train"]].mean()),
        }
        if name in described:
            metrics[name]["model"] = described[name]
    metrics["pca"]["explained_variance"] = pca.explained
    kept = {"start": "the PCA start", "trained": "the trained weights"}
    starts, notes = {}, []
    for name, history in histories.items():
        starts[name] = warm_start(history)
        if "val_loss_start" in starts[name]:
            notes.append(
                f"{'model' if name == 'rnn' else 'linear path alone'}: "
                f"{kept[starts[name]['kept']]} kept (validation loss "
                f"{starts[name]['val_loss_start']:.4g} at the PCA start -> "
                f"{starts[name]['val_loss_best']:.4g})"
            )
    for note in notes:
        log.info(note)
    if scored_on != "test":
        log.warning(
            "no test units: the reconstruction errors are those of the %s units, which %s",
            scored_on,
            "chose the weights kept" if scored_on == "val" else "were trained on",
        )
    record = {
        "scored_on": scored_on,
        "n_sequences": len(ids[scored_on]),
        "start": start,
        "warm_start": starts,
    }
    return metrics, record, notes


def output_targets(layout: str, key: str) -> list[tuple[str, str]]:
    """Where ``embed`` writes for ``layout`` (attribute, key): checked free before training."""
    rows, mats = Layout.of(layout).unit_axis, Layout.of(layout).unit_matrices
    out = [(mats, f"X_{key}")]
    if Layout.of(layout).steps_are_observations:
        out.append((mats, f"X_{key}_series"))
    return [*out, (rows, f"{key}_cluster"), (rows, f"{key}_split"), ("uns", key)]


def write_embedding(target, index: SequenceIndex, latent, step_latent, key) -> list[str]:
    """Write the latents through the index: per unit, and per step in obs-series (returns the
    keys written)."""
    unit_latent = broadcast_to_rows(index, pool_units(index, latent)).astype(np.float32)
    if not index.layout_kind.steps_are_observations:
        return [index.write_matrix(target, f"X_{key}", unit_latent)]
    per_step = scatter_steps(index, step_latent).astype(np.float32)
    return [
        index.write_matrix(target, f"X_{key}", per_step),
        index.write_matrix(target, f"X_{key}_series", unit_latent),
    ]


def eval_labels(target, index: SequenceIndex, eval_label: str | None):
    """The known groups of ``eval_label`` (:class:`~anndata_rnn.sequences.Labels`; None
    without one), their notes logged."""
    if eval_label is None:
        return None
    labels = read_labels(target, index, eval_label, max_missing_fraction=1.0)
    for note in labels.notes:
        log.info(note)
    return labels


def embed_config(
    run, spec, values, prep, n_latent, linear_path, max_missing, val_fraction, test_fraction,
    split_key, seed,
) -> dict:  # fmt: skip
    """The model config of an ``embed`` run (``run``: its :class:`~anndata_rnn.runs.
    TrainingRun`; ``values``: the encoded sequences, for their shape)."""
    n_outputs = int(values.shape[-1]) - int(prep.use_time)
    arch = {
        **run.architecture,
        "n_latent": int(n_latent),
        "n_outputs": n_outputs,
        "time_channel": prep.use_time,
        "linear_path": bool(linear_path),
        "max_steps": int(values.shape[1]),
    }
    return {
        "task": "embed",
        "layout": spec.layout,
        "keys": spec.model_keys(),
        "architecture": arch,
        "n_inputs": int(values.shape[-1]),
        "train": {
            **run.train_config.to_dict(),
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "split_key": split_key,
        },
        "max_missing": float(max_missing),
        "seed": seed,
    }


@dataclass
class Clusters:
    """What :func:`cluster_embedding` found and wrote."""

    written: str  # the cluster column
    rnn_metrics: dict
    baseline_metrics: dict  # PCA + k-means on the same units
    reports: dict
    info: dict  # config["cluster"]: method, level, n_clusters, resolution
    arrays: dict  # the k-means centres (a model applies them to new data)


def cluster_embedding(
    target, index: SequenceIndex, level, usable, fitted: FittedEmbedding, labels, values,
    method, n_clusters, resolution, n_latent, seed, key,
) -> Clusters:  # fmt: skip
    """Cluster the embedding at ``level`` (units or steps), write the clusters, and compare
    them with PCA + k-means on the same units (and with ``labels``' groups when given)."""
    latent, step_latent = fitted.latents
    members, steps, rnn_x = clustered_members(index, level, usable, latent, step_latent)
    truth = None if labels is None else clustered_truth(labels, index, members, steps)
    k = n_clusters
    if k is None and method == "kmeans" and labels is not None:
        k = len(labels.classes)
    codes, centers = cluster_matrix(
        rnn_x, method=method, n_clusters=k, resolution=resolution, seed=seed
    )
    n_found = int(codes.max()) + 1
    written = write_clusters(target, index, level, codes, members, n_found, key)
    classes = None if labels is None else labels.classes
    rnn_metrics, baseline_metrics, reports = compare_clusters(
        index, values, members, steps, rnn_x, codes, truth, classes, n_latent, seed
    )
    kind = index.layout_kind
    info = {
        "method": method,
        "level": "series" if (level == "unit" and kind.steps_are_observations) else level,
        "n_clusters": n_found,
        "resolution": float(resolution),
    }
    arrays = {} if centers is None else {"cluster_centers": centers.astype(np.float64)}
    log.info(
        "%s: %d clusters of %d %s", method, n_found, len(codes), level_name(index.layout, level)
    )
    return Clusters(written, rnn_metrics, baseline_metrics, reports, info, arrays)


def apply_embedding(opened, key: str, batch_size: int) -> dict:
    """Embed new data with a saved autoencoder; k-means models also assign clusters.

    Each unit (or observation, for step-level clusters) goes to the nearest training k-means
    centre; units missing more than the model's ``max_missing`` get no cluster. With the
    training ``eval_label`` present in the data, ARI and NMI are reported.

    ``opened``: the :class:`~anndata_rnn.runs.OpenedModel` of ``predict`` (model, index, data).
    """
    model, index, target = opened.model, opened.index, opened.target
    steps = Layout.of(model.layout).steps_are_observations
    enc = opened.stream(
        lambda x, n: embed_sequences(model.module, x, n, opened.device, batch_size, steps=steps),
        batch_size,
    )
    latent, step_latent, errors = enc.outputs
    written = write_embedding(target, index, latent, step_latent, key)
    missing = enc.missing_fraction(model.preprocessor)
    usable = pool_units(index, missing) <= float(model.config.get("max_missing", 1.0))
    metrics = {
        "rnn": reconstruction_metrics(errors, index.sequences_of_units(np.flatnonzero(usable)))
    }
    out = {"written": written, "n_imputed": enc.imputed, "metrics": metrics}
    info = model.config.get("cluster") or {}
    centers = model.arrays.get("cluster_centers")
    if info.get("method") != "kmeans" or centers is None:
        return out
    level = "step" if info.get("level") == "step" else "unit"
    members, steps, x = clustered_members(index, level, usable, latent, step_latent)
    codes = nearest_centre(x, centers)
    written.append(write_clusters(target, index, level, codes, members, len(centers), key))
    label_key = opened.spec.get("eval_label")
    if label_key and label_key in index.frame(target).columns and len(codes):
        try:
            labels = read_labels(target, index, label_key, max_missing_fraction=1.0)
        except InputError:
            return out
        if level == "unit" and labels.level == "step":
            return out
        truth = clustered_truth(labels, index, members, steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rnn_metrics, report = clustering_metrics(x, codes, truth, labels.classes, 0)
        out["metrics"]["rnn"].update(rnn_metrics)
        out["cluster_report"] = {"rnn": report}
    return out

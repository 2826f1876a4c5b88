"""The autoencoder of ``embed`` from its PCA start, beside the linear path alone and PCA.

The PCA of the flattened sequences (:func:`~anndata_rnn.baselines.pca_reconstruction`, fitted on
the training units) is both the baseline and the start: the linear path of the model and of the
ablation (the linear path alone) is set to its loadings, the recurrent part starts at zero, and
the start competes on the validation units (kept unless training beats it). All three are scored
on the same held-out units with the same per-sequence error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .baselines import PCAReconstruction, embedding_baseline, pca_reconstruction
from .metrics import clustering_metrics, reconstruction_metrics
from .networks import build_module
from .networks.autoencoder import embed_sequences, masked_mse
from .sequences import Layout, SequenceIndex, broadcast_to_rows, pool_units, scatter_steps
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

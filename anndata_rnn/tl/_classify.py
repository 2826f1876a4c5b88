"""Sequence classification: labels, probabilities and embeddings, beside a logistic baseline."""

from __future__ import annotations

import logging

import numpy as np
import torch
from anndata import AnnData
from sklearn.utils.class_weight import compute_class_weight

from ..baselines import logistic_baseline
from ..errors import InputError
from ..metrics import classification_metrics
from ..networks import architecture, build_module
from ..networks.classifier import predict_proba
from ..preprocessing import Preprocessor
from ..runs import OpenedModel, check_keys_free, start_training, task_api
from ..sequences import (
    Labels,
    SequenceIndex,
    SequenceSpec,
    broadcast_to_rows,
    pool_units,
    read_labels,
    scatter_steps,
)
from ..training import TrainConfig, fit

log = logging.getLogger("anndata_rnn")


@task_api
def classify(
    adata: AnnData,
    *,
    label_key: str,
    layout: str = "obs-series",
    series_key: str | None = None,
    time_key: str | None = None,
    series_subset: list[str] | None = None,
    order_key: str | None = None,
    chunk_size: int = 32,
    layer: str | None = None,
    use_rep: str | None = None,
    normalize: str = "auto",
    n_top_genes: int | None = None,
    gene_subset: str | None = None,
    scale: str = "feature",
    hidden=(128, 64),
    cell: str = "lstm",
    bidirectional: bool = False,
    dropout: float = 0.2,
    max_epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    patience: int = 10,
    class_weights: bool = False,
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
    """Train an LSTM/GRU classifier on sequences built from ``adata`` and write its results.

    Parameters
    ----------
    adata
        The AnnData (not modified when ``copy=True``).
    label_key
        Column with the classes: in ``obs`` (obs-series, profile) or ``var`` (var-series). In
        obs-series, a label constant within every series is predicted per series; otherwise
        per step (observation).
    layout
        ``"obs-series"``, ``"var-series"`` or ``"profile"`` (see :mod:`anndata_rnn.sequences`).
    series_key, time_key
        obs columns naming the series and the numeric time of each observation.
    series_subset
        Only these series (var-series: e.g. ``["cdc15"]``).
    order_key, chunk_size
        profile: var column giving the gene order, and genes per step.
    layer, use_rep
        Read features from ``layers[layer]`` or ``obsm[use_rep]`` instead of X.
    normalize
        ``"auto"`` applies normalize_total + log1p when the matrix looks like raw counts;
        ``"always"`` / ``"never"`` force it.
    n_top_genes, gene_subset
        Gene selection: highly variable genes (fitted on training rows) or a boolean var column.
        In var-series ``gene_subset`` selects which genes become sequences.
    scale
        ``"feature"`` standardizes each feature with training statistics; ``"sequence"``
        z-scores each sequence on its own (shape only).
    hidden, cell, bidirectional, dropout
        Encoder architecture (stacked layer sizes, ``"lstm"`` or ``"gru"``).
    max_epochs, batch_size, lr, patience, class_weights
        Training: Adam, early stopping on the validation loss after ``patience`` epochs without
        improvement (best weights restored); balanced class weights for imbalance.
    val_fraction, test_fraction, split_key
        Split by sequence (never by steps of one sequence), stratified where labels allow, or
        from a column of train/val/test.
    seed, device
        Seed for python/numpy/torch and the split; ``"auto"`` uses CUDA when available.
    key_added
        Prefix of every output key.
    overwrite
        Replace existing output keys instead of refusing.
    quiet
        No progress bar.
    copy
        Work on a copy and return it.

    Returns
    -------
    The fitted :class:`~anndata_rnn.Model`; with ``copy=True`` a tuple ``(model, adata_copy)``.
    Writes ``{key}_pred`` (categorical), ``{key}_conf``, ``{key}_split`` to obs (var for
    var-series), ``{key}_proba`` and ``X_{key}`` to obsm (varm) and ``uns[key]``.
    """
    spec = SequenceSpec(
        layout,
        series_key,
        time_key,
        series_subset,
        order_key,
        chunk_size,
        layer,
        use_rep,
        key_added,
        extra=(("label_key", label_key),),
    )
    run = start_training(
        adata,
        spec,
        architecture=architecture(hidden, cell, dropout, bidirectional),
        train_config=TrainConfig(max_epochs, batch_size, lr, patience),
        seed=seed,
        device=device,
        copy=copy,
        gene_subset=gene_subset,
    )
    target, key = run.target, run.key
    labels = read_labels(target, run.index, label_key)
    for note in labels.notes:
        log.info(note)
    check_keys_free(target, output_targets(layout, key), overwrite)

    # split by unit (series / gene / cell)
    if labels.level == "unit":
        usable, strata = labels.codes >= 0, labels.codes
    else:  # obs-series step labels: one sequence per unit, usable when any step is labelled
        usable = (labels.sequence_targets(run.index, np.arange(run.index.n_sequences)) >= 0).any(1)
        strata = None
    split = run.choose_split(
        split_key=split_key,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        usable=usable,
        strata=strata,
    )
    _check_training_classes(labels, run.index, split)
    prep = Preprocessor(
        layout=layout, scale=scale, use_time=time_key is not None and layout != "profile"
    )
    enc = run.prepare(
        split,
        prep,
        normalize=normalize,
        n_top_genes=n_top_genes,
        gene_subset=gene_subset,
        order_key=order_key,
    )
    index, ids = run.index, run.ids
    values, lengths = torch.from_numpy(enc.values), torch.from_numpy(enc.lengths)
    y = torch.from_numpy(labels.sequence_targets(index, np.arange(index.n_sequences)))

    config = {
        "task": "classify",
        "layout": layout,
        "keys": spec.keys(),
        "architecture": run.architecture,
        "classes": [str(c) for c in labels.classes],
        "label_level": labels.level,
        "n_inputs": int(values.shape[-1]),
        "train": {
            **run.train_config.to_dict(),
            "class_weights": bool(class_weights),
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "split_key": split_key,
        },
        "seed": seed,
    }
    module = build_module("classify", config["n_inputs"], config)
    weight = (
        _class_weights(y, ids["train"], len(labels.classes), run.device) if class_weights else None
    )
    criterion = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=-1)

    def scored(net, batch):
        x, n, target_y = batch
        logits, _ = net(x, n)
        if net.level == "step":
            target_y = target_y[:, : logits.shape[1]]
        return logits, target_y

    def loss_fn(net, batch):
        logits, target_y = scored(net, batch)
        return criterion(logits.reshape(-1, logits.shape[-1]), target_y.reshape(-1))

    def accuracy(net, batch):
        logits, target_y = scored(net, batch)
        labelled = target_y >= 0
        return (logits.argmax(-1)[labelled] == target_y[labelled]).sum(), labelled.sum()

    def subset(name):
        chosen = ids[name]
        if labels.level == "unit":  # unlabelled sequences never enter the loss
            chosen = chosen[y[chosen].numpy() >= 0]
        return values[chosen], lengths[chosen], y[chosen]

    history = fit(
        module,
        loss_fn,
        subset("train"),
        subset("val") if len(ids["val"]) else None,
        run.train_config,
        device=run.device,
        seed=seed,
        quiet=quiet,
        description=f"classify ({layout})",
        val_metric=("accuracy", accuracy),
    )

    proba, embedding = predict_proba(module, values, lengths, run.device)
    baseline_proba = logistic_baseline(values, lengths, y, ids["train"], labels, seed)
    metrics = {}
    if len(ids["test"]):
        metrics["rnn"] = _test_metrics(index, labels, proba, ids["test"])
        metrics["baseline"] = _test_metrics(index, labels, baseline_proba, ids["test"])
        metrics["baseline"]["model"] = "logistic regression (sklearn) on the flattened inputs"
    else:
        log.warning("no test split (test_fraction=0): no metrics computed")

    written = _write_results(target, index, labels.classes, labels.level, proba, embedding, key)
    run.write_split()  # not listed in "written", as before
    classes = [str(c) for c in labels.classes]
    return run.finish(
        config,
        module,
        head={"label_key": label_key, "level": labels.level, "classes": classes},
        params={
            "normalize": normalize,
            "n_top_genes": n_top_genes,
            "gene_subset": gene_subset,
            "scale": scale,
        },
        preprocessing={
            "normalized": prep.normalize,
            "n_features": len(prep.features),
            "n_imputed": enc.imputed,
        },
        metrics=metrics,
        written=written,
        history=history,
        notes=labels.notes,
        arrays={"classes": np.asarray(classes, dtype=object)},
    )


def _class_weights(y: torch.Tensor, train_ids, n_classes: int, device) -> torch.Tensor:
    """Balanced class weights from the training labels (classes absent from them weigh 1)."""
    train_y = y[train_ids].numpy().ravel()
    train_y = train_y[train_y >= 0]
    present = np.unique(train_y)
    w = np.ones(n_classes)
    w[present] = compute_class_weight("balanced", classes=present, y=train_y)
    return torch.tensor(w, dtype=torch.float32, device=device)


def output_targets(layout: str, key: str) -> list[tuple[str, str]]:
    rows, mats = ("var", "varm") if layout == "var-series" else ("obs", "obsm")
    return [
        (rows, f"{key}_pred"),
        (rows, f"{key}_conf"),
        (rows, f"{key}_split"),
        (mats, f"{key}_proba"),
        (mats, f"X_{key}"),
        ("uns", key),
    ]


def apply_classifier(opened: OpenedModel, key: str, batch_size: int) -> dict:
    """Predict with a saved classifier; writes the same keys as training (no split)."""
    model, index, target = opened.model, opened.index, opened.target
    classes = np.asarray(model.classes, dtype=object)
    enc = opened.stream(
        lambda x, n: predict_proba(model.module, x, n, opened.device, batch_size), batch_size
    )
    proba, embedding = enc.outputs
    written = _write_results(
        target, index, classes, model.config["label_level"], proba, embedding, key
    )
    out = {"written": written, "n_imputed": enc.imputed}
    label_key = opened.spec.get("label_key")
    if label_key in index.frame(target).columns:
        try:
            labels = read_labels(target, index, label_key)
        except InputError:
            return out
        # evaluate on every labelled unit of the new data, in the model's class order
        labels = labels.recode(classes)
        out["metrics"] = {"rnn": _test_metrics(index, labels, proba, np.arange(index.n_sequences))}
    return out


def _check_training_classes(labels: Labels, index: SequenceIndex, split: np.ndarray) -> None:
    if labels.level == "unit":
        train_codes = labels.codes[split == "train"]
    else:
        train_codes = labels.sequence_targets(
            index, index.sequences_of_units(np.flatnonzero(split == "train"))
        ).ravel()
    counts = np.bincount(train_codes[train_codes >= 0], minlength=len(labels.classes))
    if labels.level == "step":
        # per-step labels: a split by series can hold a whole class out (e.g. each trajectory
        # ends in its own fate); train anyway and let the held-out metrics show it
        absent = [str(labels.classes[c]) for c in range(len(counts)) if counts[c] == 0]
        if len(absent) == len(counts) - 1 or counts.sum() < 2:
            raise InputError(
                f"the training split holds fewer than 2 classes of {labels.key!r}: give more "
                "series or an explicit split (--split-key)"
            )
        if absent:
            log.warning(
                "class(es) %s of %r never occur in the training series: the model cannot "
                "predict them (the test metrics will show this)",
                ", ".join(absent),
                labels.key,
            )
        return
    small = [f"{labels.classes[c]!r} ({counts[c]})" for c in range(len(counts)) if counts[c] < 2]
    if small:
        raise InputError(
            f"class(es) {', '.join(small)} of {labels.key!r} have fewer than 2 members in the "
            "training split: drop or merge rare classes, or give more data"
        )


def _test_metrics(index, labels: Labels, proba: np.ndarray, test_ids: np.ndarray) -> dict:
    if labels.level == "unit":
        unit_proba = pool_units(index, proba)
        units = np.unique(index.unit[test_ids])
        units = units[labels.codes[units] >= 0]
        return classification_metrics(labels.codes[units], unit_proba[units], labels.classes)
    targets = labels.sequence_targets(index, test_ids)
    chosen = targets >= 0
    return classification_metrics(targets[chosen], proba[test_ids][chosen], labels.classes)


def _write_results(target, index: SequenceIndex, classes, level, proba, embedding, key):
    """The inverse of the sequence index: per unit / per step values into obs/var and obsm/varm."""
    classes = np.asarray(classes, dtype=object)
    if level == "unit":
        rows_proba = broadcast_to_rows(index, pool_units(index, proba))
        rows_embedding = broadcast_to_rows(index, pool_units(index, embedding))
    else:
        rows_proba = scatter_steps(index, proba)
        rows_embedding = scatter_steps(index, embedding)
    predicted = np.isfinite(rows_proba).all(axis=1)
    pred = np.full(len(rows_proba), None, dtype=object)
    pred[predicted] = classes[rows_proba[predicted].argmax(axis=1)]
    conf = np.where(predicted, np.nan_to_num(rows_proba).max(axis=1), np.nan)
    return [
        index.write_column(target, f"{key}_pred", pred, categories=classes),
        index.write_column(target, f"{key}_conf", conf),
        index.write_matrix(target, f"{key}_proba", rows_proba.astype(np.float64)),
        index.write_matrix(target, f"X_{key}", rows_embedding.astype(np.float32)),
    ]

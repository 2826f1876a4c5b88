"""Sequence classification: labels, probabilities and embeddings, beside a logistic baseline."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from anndata import AnnData
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_class_weight

from ..errors import InputError
from ..model import Model
from ..networks import build_module
from ..preprocessing import FeatureSource, Preprocessor
from ..sequences import (
    Labels,
    SequenceIndex,
    broadcast_to_rows,
    pool_units,
    read_labels,
    scatter_steps,
)
from ..training import fit
from ._common import (  # noqa: F401  (architecture: re-exported for other tasks)
    architecture,
    build_sequences,
    check_keys_free,
    encode,
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
from ._metrics import classification_metrics

log = logging.getLogger("anndata_rnn")


@torch.no_grad()
def run_network(module, values: torch.Tensor, lengths: torch.Tensor, device, batch_size=512):
    """Forward pass in batches; returns ``(probabilities, embeddings)`` as numpy arrays."""
    module.eval()
    module.to(device)
    probs, embeddings = [], []
    for start in range(0, len(values), batch_size):
        x = values[start : start + batch_size].to(device)
        n = lengths[start : start + batch_size]
        logits, embedding = module(x, n)
        probs.append(torch.softmax(logits, dim=-1).cpu().numpy())
        embeddings.append(embedding.cpu().numpy())
    return np.concatenate(probs), np.concatenate(embeddings)


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
    target = target_of(adata, copy)
    key = key_added
    arch, train_config, torch_device = training_setup(
        hidden=hidden,
        cell=cell,
        dropout=dropout,
        bidirectional=bidirectional,
        max_epochs=max_epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        seed=seed,
        device=device,
    )
    keys = sequence_keys(
        layout=layout,
        label_key=label_key,
        series_key=series_key,
        time_key=time_key,
        series_subset=series_subset,
        order_key=order_key,
        chunk_size=chunk_size,
        layer=layer,
        use_rep=use_rep,
        key_added=key,
    )
    source = FeatureSource(target, layer=layer, use_rep=use_rep)
    index = training_index(target, keys, gene_subset)
    labels = read_labels(target, index, label_key)
    for note in labels.notes:
        log.info(note)
    check_keys_free(target, output_targets(layout, key), overwrite)

    # split by unit (series / gene / cell)
    if labels.level == "unit":
        usable = labels.codes >= 0
        strata = labels.codes
    else:
        # obs-series step labels: one sequence per unit, usable when any step is labelled
        usable = (labels.sequence_targets(index, np.arange(index.n_sequences)) >= 0).any(axis=1)
        strata = None
    if split_key is not None:
        split = split_from_column(target, index, split_key)
        split = np.where(usable, split, "unused")
    else:
        split = make_split(
            index.n_units,
            usable=usable,
            strata=strata,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
        )
    _check_training_classes(labels, index, split)
    ids = {
        name: index.sequences_of_units(np.flatnonzero(split == name))
        for name in ("train", "val", "test")
    }
    log_split(layout, split)

    prep = Preprocessor(
        layout=layout, scale=scale, use_time=time_key is not None and layout != "profile"
    )
    fit_preprocessor(
        prep,
        target,
        source,
        index,
        ids["train"],
        normalize=normalize,
        n_top_genes=n_top_genes,
        gene_subset=gene_subset,
        order_key=order_key,
    )
    if layout == "profile":
        index = build_sequences(target, keys, n_features=len(prep.features))

    all_ids = np.arange(index.n_sequences)
    values, lengths, imputed = encode(index, source, prep, all_ids)
    if imputed:
        log.info(
            "imputed %d missing values (interpolation along time, then training mean)", imputed
        )
    y = torch.from_numpy(labels.sequence_targets(index, all_ids))

    config = {
        "task": "classify",
        "layout": layout,
        "keys": keys,
        "architecture": arch,
        "classes": [str(c) for c in labels.classes],
        "label_level": labels.level,
        "n_inputs": int(values.shape[-1]),
        "train": {
            **train_config.to_dict(),
            "class_weights": bool(class_weights),
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "split_key": split_key,
        },
        "seed": seed,
    }
    module = build_module("classify", config["n_inputs"], config)

    weight = None
    if class_weights:
        train_y = y[ids["train"]].numpy().ravel()
        train_y = train_y[train_y >= 0]
        present = np.unique(train_y)
        w = np.ones(len(labels.classes))
        w[present] = compute_class_weight("balanced", classes=present, y=train_y)
        weight = torch.tensor(w, dtype=torch.float32, device=torch_device)
    criterion = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=-1)

    def loss_fn(net, batch):
        x, n, target_y = batch
        logits, _ = net(x, n)
        if net.level == "step":
            target_y = target_y[:, : logits.shape[1]]
        return criterion(logits.reshape(-1, logits.shape[-1]), target_y.reshape(-1))

    def accuracy(net, batch):
        x, n, target_y = batch
        logits, _ = net(x, n)
        if net.level == "step":
            target_y = target_y[:, : logits.shape[1]]
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
        train_config,
        device=torch_device,
        seed=seed,
        quiet=quiet,
        description=f"classify ({layout})",
        val_metric=("accuracy", accuracy),
    )

    proba, embedding = run_network(module, values, lengths, torch_device)
    baseline_proba = _logistic_baseline(values, lengths, y, ids["train"], labels, seed)
    metrics = {}
    if len(ids["test"]):
        metrics["rnn"] = _test_metrics(index, labels, proba, ids["test"])
        metrics["baseline"] = _test_metrics(index, labels, baseline_proba, ids["test"])
        metrics["baseline"]["model"] = "logistic regression (sklearn) on the flattened inputs"
    else:
        log.warning("no test split (test_fraction=0): no metrics computed")

    written = _write_results(target, index, labels.classes, labels.level, proba, embedding, key)
    split_rows = broadcast_to_rows(index, np.asarray(split, dtype=object))
    frame = target.var if layout == "var-series" else target.obs
    set_column(frame, f"{key}_split", split_rows, categories=["train", "val", "test", "unused"])

    config["metrics"] = {
        name: {m: v for m, v in values_.items() if np.ndim(v) == 0}
        for name, values_ in metrics.items()
    }
    config["versions"] = versions()
    config["device"] = str(torch_device)
    store_uns(
        target,
        key,
        {
            "task": "classify",
            "layout": layout,
            "label_key": label_key,
            "level": labels.level,
            "classes": [str(c) for c in labels.classes],
            "params": {
                **{k: v for k, v in keys.items() if v is not None},
                **arch,
                **config["train"],
                "normalize": normalize,
                "n_top_genes": n_top_genes,
                "gene_subset": gene_subset,
                "scale": scale,
            },
            "preprocessing": {
                "normalized": prep.normalize,
                "n_features": len(prep.features),
                "n_imputed": imputed,
            },
            "metrics": metrics,
            "history": {k: np.asarray(v) if isinstance(v, list) else v for k, v in history.items()},
            "written": written,
            "seed": seed,
            "device": str(torch_device),
            "versions": config["versions"],
            "notes": index.notes + labels.notes,
        },
    )
    model = Model(
        config, prep, module.cpu(), arrays={"classes": np.asarray(config["classes"], dtype=object)}
    )
    return (model, target) if copy else model


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


def apply_classifier(
    target: AnnData,
    model: Model,
    *,
    key: str,
    source: FeatureSource,
    index: SequenceIndex,
    device,
    batch_size: int,
) -> dict:
    """Predict with a saved classifier; writes the same keys as training (no split)."""
    classes = np.asarray(model.classes, dtype=object)
    all_ids = np.arange(index.n_sequences)
    values, lengths, imputed = encode(index, source, model.preprocessor, all_ids)
    proba, embedding = run_network(model.module, values, lengths, device, batch_size)
    written = _write_results(
        target, index, classes, model.config["label_level"], proba, embedding, key
    )
    out = {"written": written, "n_imputed": imputed}
    label_key = model.config["keys"].get("label_key")
    frame = target.var if model.layout == "var-series" else target.obs
    if label_key in frame.columns:
        try:
            labels = read_labels(target, index, label_key)
        except InputError:
            return out
        # evaluate on every labelled unit of the new data, in the model's class order
        remap = {c: i for i, c in enumerate(classes)}
        codes = np.array([remap.get(str(c), -1) for c in labels.classes])
        labels.codes = np.where(labels.codes >= 0, codes[labels.codes], -1)
        labels.classes = classes
        out["metrics"] = {"rnn": _test_metrics(index, labels, proba, all_ids)}
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


def _logistic_baseline(values, lengths, y, train_ids, labels: Labels, seed: int) -> np.ndarray:
    """Logistic regression on the same preprocessed inputs and split; proba like the RNN's."""
    x = values.numpy()
    targets = y.numpy()
    model = LogisticRegression(max_iter=1000, random_state=seed)
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
    proba = np.zeros((*raw.shape[:-1], len(labels.classes)))
    proba[..., model.classes_] = raw
    return proba


def _write_results(target, index, classes, level, proba, embedding, key) -> list[str]:
    """The inverse of the sequence index: per unit / per step values into obs/var and obsm/varm."""
    classes = np.asarray(classes, dtype=object)
    if level == "unit":
        unit_proba = pool_units(index, proba)
        unit_embedding = pool_units(index, embedding)
        rows_proba = broadcast_to_rows(index, unit_proba)
        rows_embedding = broadcast_to_rows(index, unit_embedding)
    else:
        rows_proba = scatter_steps(index, proba)
        rows_embedding = scatter_steps(index, embedding)
    predicted = np.isfinite(rows_proba).all(axis=1)
    pred = np.full(len(rows_proba), None, dtype=object)
    pred[predicted] = classes[rows_proba[predicted].argmax(axis=1)]
    conf = np.where(predicted, np.nan_to_num(rows_proba).max(axis=1), np.nan)
    if index.layout == "var-series":
        frame, matrices, rows, mats = target.var, target.varm, "var", "varm"
    else:
        frame, matrices, rows, mats = target.obs, target.obsm, "obs", "obsm"
    set_column(frame, f"{key}_pred", pred, categories=classes)
    set_column(frame, f"{key}_conf", conf)
    matrices[f"{key}_proba"] = rows_proba.astype(np.float64)
    matrices[f"X_{key}"] = rows_embedding.astype(np.float32)
    return [
        f"{rows}/{key}_pred",
        f"{rows}/{key}_conf",
        f"{mats}/{key}_proba",
        f"{mats}/X_{key}",
    ]

"""Shared pieces of the accuracy benchmarks (issue 12).

The tasks in ``anndata_rnn.tl`` do not yet pass the new architecture keys or the step schedule,
so this module wires them itself from the same pieces the classify task uses: sequence index,
split, Preprocessor, encode, ``networks.build_module``, ``training.fit``, the task's logistic
baseline and metrics. Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import math
import time

import numpy as np
import torch
from anndata_rnn.tl._common import (
    architecture,
    build_sequences,
    encode,
    fit_preprocessor,
    make_split,
    sequence_keys,
    training_index,
)

from anndata_rnn.networks import build_module
from anndata_rnn.preprocessing import FeatureSource, Preprocessor
from anndata_rnn.sequences import read_labels
from anndata_rnn.tl._classify import _logistic_baseline, _test_metrics, run_network
from anndata_rnn.training import TrainConfig, fit, seed_everything

torch.set_num_threads(1)
log = logging.getLogger("anndata_rnn")

#: what "default options" mean for a new model after issue 12
NEW_DEFAULTS = {"linear_path": True}


def prepare_classification(
    adata,
    *,
    label_key,
    layout,
    seed=0,
    series_key=None,
    time_key=None,
    series_subset=None,
    chunk_size=32,
    normalize="auto",
    n_top_genes=None,
    scale="feature",
    split=None,
    val_fraction=0.15,
    test_fraction=0.15,
    gene_order=None,
):
    """Everything classify prepares before building the network (its code path, shortened)."""
    seed_everything(seed)
    keys = sequence_keys(
        layout=layout,
        label_key=label_key,
        series_key=series_key,
        time_key=time_key,
        series_subset=series_subset,
        chunk_size=chunk_size,
    )
    source = FeatureSource(adata)
    index = training_index(adata, keys, None)
    labels = read_labels(adata, index, label_key)
    if split is None:
        usable = labels.codes >= 0
        split = make_split(
            index.n_units,
            usable=usable,
            strata=labels.codes,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
        )
    ids = {
        name: index.sequences_of_units(np.flatnonzero(split == name))
        for name in ("train", "val", "test")
    }
    prep = Preprocessor(
        layout=layout, scale=scale, use_time=time_key is not None and layout != "profile"
    )
    fit_preprocessor(
        prep,
        adata,
        source,
        index,
        ids["train"],
        normalize=normalize,
        n_top_genes=n_top_genes,
        gene_subset=None,
    )
    if gene_order is not None:  # a callable reordering prep.features from training rows
        gene_order(prep, source, index, ids["train"])
    if layout == "profile":
        index = build_sequences(adata, keys, n_features=len(prep.features))
    all_ids = np.arange(index.n_sequences)
    values, lengths, _ = encode(index, source, prep, all_ids)
    y = torch.from_numpy(labels.sequence_targets(index, all_ids))
    return {
        "index": index,
        "labels": labels,
        "ids": ids,
        "values": values,
        "lengths": lengths,
        "y": y,
        "prep": prep,
        "seed": seed,
    }


def warm_start(module, data):
    """The wiring proposed for the task: fit the task's logistic baseline (same inputs, same
    settings as ``_logistic_baseline``) and start the linear path there."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    x, y = data["values"].numpy(), data["y"].numpy()
    train_ids = data["ids"]["train"]
    model = LogisticRegression(max_iter=1000, random_state=data["seed"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if data["labels"].level == "unit":
            chosen = train_ids[y[train_ids] >= 0]
            model.fit(x[chosen].reshape(len(chosen), -1), y[chosen])
        else:
            mask = np.zeros(y.shape, dtype=bool)
            mask[train_ids] = y[train_ids] >= 0
            model.fit(x[mask], y[mask])
    module.init_linear(model.coef_, model.intercept_, model.classes_)


def train_classifier(
    data, *, arch_extra=None, train=None, hidden=(128, 64), cell="lstm", warm=False
):
    """Build + fit one classifier variant; returns ``(test metrics, history, seconds)``."""
    seed = data["seed"]
    seed_everything(seed)
    arch = architecture(hidden, cell, 0.2, False)
    arch.update(arch_extra or {})
    if arch.get("linear_path") or not arch.get("recurrent", True):
        arch.setdefault("max_steps", int(data["values"].shape[1]))
    labels = data["labels"]
    config = {
        "architecture": arch,
        "classes": [str(c) for c in labels.classes],
        "label_level": labels.level,
    }
    module = build_module("classify", int(data["values"].shape[-1]), config)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=-1)
    values, lengths, y, ids = data["values"], data["lengths"], data["y"], data["ids"]

    def loss_fn(net, batch):
        x, n, target_y = batch
        logits, _ = net(x, n)
        if net.level == "step":
            target_y = target_y[:, : logits.shape[1]]
        return criterion(logits.reshape(-1, logits.shape[-1]), target_y.reshape(-1))

    def subset(name):
        chosen = ids[name]
        if labels.level == "unit":
            chosen = chosen[y[chosen].numpy() >= 0]
        return values[chosen], lengths[chosen], y[chosen]

    config_train = TrainConfig(**{"schedule": "steps", **(train or {})})
    t0 = time.time()
    if warm:
        warm_start(module, data)
    history = fit(
        module,
        loss_fn,
        subset("train"),
        subset("val") if len(ids["val"]) else None,
        config_train,
        device=torch.device("cpu"),
        seed=seed,
        quiet=True,
        initial_candidate=warm,
        reference_loss=math.log(len(labels.classes)) if warm else None,
    )
    seconds = time.time() - t0
    proba, _ = run_network(module, values, lengths, torch.device("cpu"))
    if data.get("index") is None:  # tensors only (simulations): one unit per sequence
        from anndata_rnn.tl._metrics import classification_metrics

        test = ids["test"]
        metrics = classification_metrics(y[test].numpy(), proba[test], labels.classes)
    else:
        metrics = _test_metrics(data["index"], labels, proba, ids["test"])
    return metrics, history, seconds


def baseline(data):
    proba = _logistic_baseline(
        data["values"].clone(),
        data["lengths"],
        data["y"],
        data["ids"]["train"],
        data["labels"],
        data["seed"],
    )
    return _test_metrics(data["index"], data["labels"], proba, data["ids"]["test"])


def one_nn(data):
    """1-nearest-neighbour (Euclidean) on the flattened standardized inputs: (accuracy, f1)."""
    from sklearn.metrics import accuracy_score, f1_score

    x = data["values"].numpy().reshape(len(data["values"]), -1)
    y = data["y"].numpy()
    tr, te = data["ids"]["train"], data["ids"]["test"]
    d = ((x[te][:, None, :] - x[tr][None, :, :]) ** 2).sum(-1)
    pred = y[tr][d.argmin(1)]
    return accuracy_score(y[te], pred), f1_score(y[te], pred, average="macro")


def summary(history) -> dict:
    keys = ("steps_run", "best_step", "batch_size", "start_loss", "final_train_loss", "failed_fit")
    out = {k: history.get(k) for k in keys}
    for k in ("start_loss", "final_train_loss"):
        if out[k] is not None and math.isfinite(out[k]):
            out[k] = round(float(out[k]), 4)
    return out


def emit(record: dict) -> None:
    print(json.dumps(record, default=float), flush=True)


def baseline_flat(data):
    """Logistic regression (sklearn defaults, as the task's baseline) on the flattened inputs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    x = data["values"].numpy().reshape(len(data["values"]), -1)
    y = data["y"].numpy()
    tr, te = data["ids"]["train"], data["ids"]["test"]
    pred = LogisticRegression(max_iter=1000).fit(x[tr], y[tr]).predict(x[te])
    return accuracy_score(y[te], pred), f1_score(y[te], pred, average="macro")

"""Training and scoring a classifier on one split: the network (recurrence + linear path), the
linear path alone trained the same way (what the recurrence adds is the difference) and the
logistic-regression baseline, all on the same encoded sequences."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight

from .baselines import logistic_baseline, nearest_neighbour_baseline
from .errors import InputError
from .metrics import classification_metrics
from .networks import build_module
from .networks.classifier import new_architecture, predict_proba
from .preprocessing import SCALE_CHOICES, Encoded
from .sequences import Labels, SequenceIndex, pool_units
from .training import TrainConfig, fit, schedule_for, take  # noqa: F401 (schedule_for: tl)

log = logging.getLogger("anndata_rnn")

#: the shape defaults (see :func:`shape_series`) apply to series longer than this many steps ...
SHAPE_MIN_STEPS = 64
#: ... with at most this many channels (features)
SHAPE_MAX_CHANNELS = 16
#: the convolutional branch the shape defaults add beside the recurrence (LSTM-FCN's blocks)
SHAPE_CONV = (64, 64, 64)
#: the step schedule of a classifier may run to this many times its budget while the
#: validation loss still improves (:class:`~anndata_rnn.training.TrainConfig` ``ceiling``)
STEP_CEILING = 4


def shape_series(layout: str, level: str, n_channels: int, max_steps: int) -> bool:
    """Whether a classification run is a *shape* problem: one label per unit, sequences along
    time (not ``profile``) longer than :data:`SHAPE_MIN_STEPS` steps with at most
    :data:`SHAPE_MAX_CHANNELS` channels, as in the time-series archives (a gesture, a sensor
    trace, an outline). There ``scale="auto"`` z-scores each sequence on its own (the archive
    convention; univariate series only) and ``conv="auto"`` adds the convolutional branch;
    elsewhere (gene-expression profiles, var-series of genes, many-gene time courses) both stay
    off."""
    return (
        layout != "profile"
        and level == "unit"
        and n_channels <= SHAPE_MAX_CHANNELS
        and max_steps > SHAPE_MIN_STEPS
    )


def shape_options(run, level: str, scale, conv) -> tuple[str, dict]:
    """``(scale, architecture)`` of a training run (``run.index``, ``run.source``,
    ``run.architecture``): the scaling that ``"auto"`` (or the user) gives it, and the
    architecture with the convolutional channels ``conv`` and ``shape``: whether
    :func:`shape_series` holds (``defaults``) and the resolved ``scale`` and ``conv`` (in the
    model config and ``uns[key]["params"]["shape"]``); logged."""
    layout, steps = run.index.layout, run.index.max_steps
    n_channels = len(run.source.feature_names)
    shape = shape_series(layout, level, n_channels, steps)
    scale = resolve_scale(scale, shape and n_channels == 1)
    conv = resolve_conv(conv, shape, level)
    if shape:
        log.info(
            "shape problem (%d steps, %d channel(s), one label per sequence): scale=%s, "
            "convolutional branch %s",
            steps,
            n_channels,
            scale,
            ",".join(map(str, conv)) if conv else "off",
        )
    # what the run resolved (params keep the values given, e.g. "auto")
    architecture = {**run.architecture, "shape": {"defaults": bool(shape), "scale": scale}}
    architecture["shape"]["conv"] = list(conv)
    if conv:
        architecture["conv"] = list(conv)
    return scale, architecture


def step_schedule(max_epochs, batch_size, lr, patience, min_steps, amp) -> TrainConfig:
    """A classifier's step schedule: the budget, then up to :data:`STEP_CEILING` × it while
    the validation loss still improves."""
    return TrainConfig(
        max_epochs,
        batch_size,
        lr,
        patience,
        schedule="steps",
        min_steps=min_steps,
        amp=amp,
        ceiling=STEP_CEILING,
    )


def resolve_scale(scale: str, univariate_shape: bool) -> str:
    """``"auto"``: per-sequence z-scores for a univariate shape problem (the archives'
    convention), else feature standardization (with several channels their relative levels
    carry information: measured on BasicMotions, README)."""
    if scale == "auto":
        return "sequence" if univariate_shape else "feature"
    if scale not in SCALE_CHOICES:
        raise InputError(f"scale must be auto or one of {SCALE_CHOICES}, got {scale!r}")
    return scale


def resolve_conv(conv, shape: bool, level: str) -> tuple[int, ...]:
    """``"auto"`` / ``"none"`` / ``"64,64,64"`` / a tuple -> channel sizes (empty: none)."""
    if conv is None or (isinstance(conv, str) and conv.strip().lower() in ("none", "", "0")):
        return ()
    if isinstance(conv, str) and conv.strip().lower() == "auto":
        return SHAPE_CONV if shape else ()
    try:
        sizes = tuple(
            int(c) for c in (conv.split(",") if isinstance(conv, str) else conv) if str(c).strip()
        )
    except (TypeError, ValueError):
        raise InputError(f"conv must be auto, none or sizes like 64,64,64, got {conv!r}") from None
    if not 1 <= len(sizes) <= 3 or not all(1 <= c <= 4096 for c in sizes):
        raise InputError(f"conv takes 1 to 3 channel sizes in 1..4096, got {conv!r}")
    if level != "unit":
        raise InputError("conv applies to one label per series (unit level), not per step")
    return sizes


@dataclass
class ClassifierFit:
    """One trained classifier with its ablation and baseline, on one split."""

    module: torch.nn.Module
    config: dict
    proba: np.ndarray
    embedding: np.ndarray
    metrics: dict
    history: dict
    linear_history: dict
    imputed: int


def train_classifier(
    index: SequenceIndex,
    labels: Labels,
    enc: Encoded,
    ids: dict,
    *,
    keys: dict,
    architecture: dict,
    train_config: TrainConfig,
    device,
    seed: int,
    options: dict,
) -> ClassifierFit:
    """Train the classifier (with the linear path when ``options["linear_path"]``), the linear
    path alone (the ablation) and the logistic baseline on the training sequences of ``ids``;
    score all three on its test sequences. ``options``: ``linear_path``, ``class_weights``,
    ``quiet`` and ``train`` (split settings recorded in the config)."""
    # lazily encoded values (streamed training) are built a batch at a time when indexed
    lazy = not isinstance(enc.values, np.ndarray)
    values = enc.values if lazy else torch.from_numpy(enc.values)
    lengths = torch.from_numpy(enc.lengths)
    y = torch.from_numpy(labels.sequence_targets(index, np.arange(index.n_sequences)))
    arch = new_architecture(
        architecture,
        max_steps=int(values.shape[1]),
        level=labels.level,
        linear_path=options["linear_path"],
    )
    config = {
        "task": "classify",
        "layout": index.layout,
        "keys": keys,
        "architecture": arch,
        "classes": [str(c) for c in labels.classes],
        "label_level": labels.level,
        "n_inputs": int(values.shape[-1]),
        "train": {
            **train_config.to_dict(),
            "class_weights": bool(options["class_weights"]),
            **options["train"],
        },
        "seed": seed,
    }
    weight = None
    if options["class_weights"]:
        weight = class_weights(y, ids["train"], len(labels.classes), device)
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
        return take(values, chosen), lengths[chosen], y[chosen]

    def train(model_config, description):
        module = build_module("classify", model_config["n_inputs"], model_config)
        history = fit(
            module,
            loss_fn,
            subset("train"),
            subset("val") if len(ids["val"]) else None,
            train_config,
            device=device,
            seed=seed,
            quiet=options["quiet"],
            description=description,
            val_metric=("accuracy", accuracy),
        )
        return module, history, predict_proba(module, values, lengths, device)

    module, history, (proba, embedding) = train(config, f"classify ({index.layout})")
    # the schedule's bounded maximum (the budget, or ceiling × it while validation improves)
    config["train"]["max_optimizer_steps"] = int(history["max_steps"])
    alone = {**config, "architecture": {**arch, "linear_path": True, "recurrent": False}}
    _, linear_history, (linear_proba, _) = train(alone, "linear path alone")
    baseline_proba, baseline_n = logistic_baseline(values, y, ids["train"], labels, seed)
    nearest = None
    if len(ids["test"]):
        # nothing to tune: the validation sequences (early stopping's) are training data for it
        known = np.sort(np.concatenate([ids["train"], ids["val"]]))
        nearest = nearest_neighbour_baseline(values, y, known, ids["test"], labels, seed)
    metrics = {}
    if len(ids["test"]):
        metrics["rnn"] = test_metrics(index, labels, proba, ids["test"])
        metrics["linear_path"] = test_metrics(index, labels, linear_proba, ids["test"])
        metrics["linear_path"]["model"] = "the linear path alone, trained the same way"
        metrics["baseline"] = test_metrics(index, labels, baseline_proba, ids["test"])
        metrics["baseline"]["model"] = "logistic regression (sklearn) on the flattened inputs"
        if baseline_n < len(ids["train"]):
            metrics["baseline"]["model"] += (
                f" (fitted on a random {baseline_n} of {len(ids['train'])} training sequences)"
            )
        if nearest is not None:
            metrics["nearest_neighbour"] = test_metrics(index, labels, nearest[0], ids["test"])
            metrics["nearest_neighbour"]["model"] = (
                "1-nearest-neighbour (sklearn, Euclidean) on the flattened inputs of the "
                "training and validation sequences"
            )
            if nearest[1] < len(known):
                metrics["nearest_neighbour"]["model"] += (
                    f" (holding a random {nearest[1]} of {len(known)} sequences)"
                )
    return ClassifierFit(
        module, config, proba, embedding, metrics, history, linear_history, enc.imputed
    )


def check_training_classes(labels: Labels, index: SequenceIndex, split: np.ndarray) -> None:
    """Enough training members of each class (unit labels), or at least 2 classes (step labels)."""
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


def class_weights(y: torch.Tensor, train_ids, n_classes: int, device) -> torch.Tensor:
    """Balanced class weights from the training labels (classes absent from them weigh 1)."""
    train_y = y[train_ids].numpy().ravel()
    train_y = train_y[train_y >= 0]
    present = np.unique(train_y)
    w = np.ones(n_classes)
    w[present] = compute_class_weight("balanced", classes=present, y=train_y)
    return torch.tensor(w, dtype=torch.float32, device=device)


def test_metrics(index, labels: Labels, proba: np.ndarray, test_ids: np.ndarray) -> dict:
    """Metrics on the test sequences: per unit (pooled) or per labelled step."""
    if labels.level == "unit":
        unit_proba = pool_units(index, proba)
        units = np.unique(index.unit[test_ids])
        units = units[labels.codes[units] >= 0]
        return classification_metrics(labels.codes[units], unit_proba[units], labels.classes)
    targets = labels.sequence_targets(index, test_ids)
    chosen = targets >= 0
    return classification_metrics(targets[chosen], proba[test_ids][chosen], labels.classes)


def log_cv(record: dict) -> None:
    """Log the paired cross-validation differences with their 95 % intervals."""
    for pair, differences in record["difference"].items():
        for name, d in differences.items():
            log.info(
                "cv %s %s: %+.3f (95%% interval %+.3f to %+.3f)",
                pair,
                name,
                d["mean"],
                d["ci95_low"],
                d["ci95_high"],
            )

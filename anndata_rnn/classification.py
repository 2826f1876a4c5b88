"""Training and scoring a classifier on one split: the network (recurrence + linear path), the
linear path alone trained the same way (what the recurrence adds is the difference) and the
logistic-regression baseline, all on the same encoded sequences.

The baseline is fitted first and both trained models start at it (:func:`start_module`); each
keeps its trained weights only when they beat that start on held-out data
(:func:`keep_or_start`, :func:`beats_start`), and each fit is checked against a model that
learned only the class prior (:func:`check_fit`)."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .baselines import logistic_baseline, nearest_neighbour_baseline
from .errors import InputError, listed
from .metrics import classification_metrics, cv_summary
from .networks import build_module
from .networks.classifier import new_architecture, predict_proba
from .preprocessing import SCALE_CHOICES, Encoded
from .sequences import (
    Labels,
    Layout,
    SequenceIndex,
    as_float32,
    broadcast_to_rows,
    pool_units,
    read_labels,
    scatter_steps,
)
from .splits import Folds, test_train_ratio, tested_in
from .training import (  # noqa: F401 (schedule_for: tl)
    FAILED_FIT_TOLERANCE,
    TrainConfig,
    fit,
    make_loader,
    schedule_for,
    take,
    to_device,
)

log = logging.getLogger("anndata_rnn")

#: validation sets with fewer labelled units than this do not decide between the start (the
#: logistic regression) and the trained model: an internal K-fold on the training units does.
#: Measured (benchmarks/accuracy/start_decision.py; results/README.md): with 6, 12, 24 and 48
#: validation units the validation decision lost no more test macro-F1 than the 5-fold on the
#: training units (mean regret 0.018 vs 0.022 at 6 units, 0.009 vs 0.016 at 24, paired-t rule),
#: so the validation decides from the smallest size measured
MIN_DECIDING_VAL_UNITS = 6
#: folds of that internal cross-validation
INNER_FOLDS = 5

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
        Layout.of(layout).is_time_series
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
    #: per trained model ("rnn", "linear_path"): the start at the logistic regression and
    #: whether training beat it (:func:`keep_or_start`)
    starts: dict


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

    def loss_of(logits, target_y):
        return criterion(logits.reshape(-1, logits.shape[-1]), target_y.reshape(-1))

    def loss_fn(net, batch):
        return loss_of(*scored(net, batch))

    def loss_and_accuracy(net, batch):  # validation: one forward pass for both
        logits, target_y = scored(net, batch)
        labelled = target_y >= 0
        correct = (logits.argmax(-1)[labelled] == target_y[labelled]).sum()
        return loss_of(logits, target_y), correct, labelled.sum()

    point = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=-1, reduction="none")

    def unit_loss(net, batch):  # per sequence: the mean over its labelled targets
        logits, target_y = scored(net, batch)
        if net.level != "step":
            return point(logits, target_y)
        labelled_steps = (target_y >= 0).float()
        losses = point(logits.transpose(1, 2), target_y) * labelled_steps
        return losses.sum(1) / labelled_steps.sum(1).clamp_min(1)

    def labelled(chosen):
        if labels.level == "unit":  # unlabelled sequences never enter the loss
            chosen = chosen[y[chosen].numpy() >= 0]
        return chosen

    def items(chosen):
        return take(values, chosen), lengths[chosen], y[chosen]

    def subset(name):
        return items(labelled(ids[name]))

    # the logistic regression first: both trained models start at it (linear path = its
    # coefficients, recurrent head at zero) and keep that start unless training beats it
    baseline_proba, baseline_n, logistic = logistic_baseline(
        values, y, ids["train"], labels, seed, with_model=True
    )
    train_set = subset("train")
    val_set = subset("val") if len(ids["val"]) else None
    reference = prior_losses(train_set[2], None if val_set is None else val_set[2], weight)
    inner = {
        "index": index,
        "labels": labels,
        "values": values,
        "y": y,
        "train_ids": labelled(ids["train"]),
        "n_val_units": len(np.unique(index.unit[labelled(ids["val"])])),
        "items": items,
        "loss_fn": loss_fn,
        "unit_loss": unit_loss,
        "val_set": val_set,
        "train_config": train_config,
        "device": device,
        "seed": seed,
    }

    def train(model_config, description):
        module = start_module(model_config, logistic)
        warm = module.linear is not None
        start_state = copy.deepcopy(module.state_dict()) if warm else None
        start_val = (
            item_losses(module, unit_loss, val_set, device)
            if warm and val_set is not None
            else None
        )
        history = fit(
            module,
            loss_fn,
            train_set,
            val_set,
            train_config,
            device=device,
            seed=seed,
            quiet=options["quiet"],
            description=description,
            val_metric=("accuracy", loss_and_accuracy),
            reference_loss=reference["train"],
        )
        start = None
        if warm:
            start = keep_or_start(
                module, start_state, history, start_val, model_config, logistic, inner, description
            )
        proba, embedding = predict_proba(module, values, lengths, device)
        if warm and start["kept"] == "start":
            start["max_proba_difference_to_baseline"] = float(np.abs(proba - baseline_proba).max())
        val_metrics = test_metrics(index, labels, proba, ids["val"]) if len(ids["val"]) else {}
        check_fit(history, reference, start, val_metrics, description)
        return module, history, (proba, embedding), start

    module, history, (proba, embedding), start = train(config, f"classify ({index.layout})")
    # the schedule's bounded maximum (the budget, or ceiling × it while validation improves)
    if "max_steps" in history:
        config["train"]["max_optimizer_steps"] = int(history["max_steps"])
    alone = {**config, "architecture": {**arch, "linear_path": True, "recurrent": False}}
    _, linear_history, (linear_proba, _), linear_start = train(alone, "linear path alone")
    starts = {}
    if start is not None:
        starts["rnn"] = start
    starts["linear_path"] = linear_start
    nearest = None
    if len(ids["test"]):
        # nothing to tune: the validation sequences (early stopping's) are training data for it
        known = np.sort(np.concatenate([ids["train"], ids["val"]]))
        nearest = nearest_neighbour_baseline(values, y, known, ids["test"], labels, seed)
    metrics = {}
    if len(ids["test"]):
        metrics["rnn"] = test_metrics(index, labels, proba, ids["test"])
        metrics["linear_path"] = test_metrics(index, labels, linear_proba, ids["test"])
        metrics["linear_path"]["model"] = (
            "the linear path alone, started at the logistic regression and trained the same way"
        )
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
        module, config, proba, embedding, metrics, history, linear_history, enc.imputed, starts
    )


def start_module(config: dict, logistic) -> torch.nn.Module:
    """The classifier ``config`` describes, started at the fitted logistic regression when it
    has a linear path (its coefficients; the recurrent head at zero): before any training step
    its predictions are the logistic regression's."""
    module = build_module("classify", config["n_inputs"], config)
    if module.linear is not None:
        module.init_linear(logistic.coef_, logistic.intercept_, logistic.classes_)
    return module


def prior_losses(train_y: torch.Tensor, val_y: torch.Tensor | None, weight) -> dict:
    """The loss of a model that learned only the class prior (the training class frequencies,
    as the weighted cross-entropy sees them): on the training labels (their entropy) and on the
    validation labels. What a failed fit stays at."""
    n_classes = len(weight) if weight is not None else None
    train = train_y.numpy().ravel()
    train = train[train >= 0]
    n_classes = n_classes or int(train.max()) + 1
    if val_y is not None:
        val = val_y.numpy().ravel()
        n_classes = max(n_classes, int(val.max()) + 1 if (val >= 0).any() else 0)
    w = np.ones(n_classes) if weight is None else weight.detach().cpu().numpy().astype(float)
    counts = np.bincount(train, minlength=n_classes) * w
    prior = counts / counts.sum()
    log_prior = np.log(np.clip(prior, 1e-12, None))
    out = {"train": float(-(counts * log_prior).sum() / counts.sum()), "val": None}
    if val_y is not None and (val >= 0).any():
        val_counts = np.bincount(val[val >= 0], minlength=n_classes) * w
        out["val"] = float(-(val_counts * log_prior).sum() / val_counts.sum())
    return out


def keep_or_start(module, start_state, history, start_val, config, logistic, inner, description):
    """Keep the trained weights only when they beat the start (the logistic regression) on held
    out data; otherwise restore the start. Returns the record of the decision.

    ``start_val``: the start's loss on each validation sequence (None without validation). With
    at least :data:`MIN_DECIDING_VAL_UNITS` labelled validation units the validation decides
    (the start against the best validation step, as the forecaster's ridge start competes);
    with fewer, a :data:`INNER_FOLDS`-fold cross-validation on the training units
    (:func:`inner_cv`) compares each fold's start with as many training steps as the run kept.
    Either way the decision is :func:`beats_start` on the paired per-sequence losses.
    """
    steps = int(history["best_step"])
    trained_val = None
    if start_val is not None:
        trained_val = item_losses(module, inner["unit_loss"], inner["val_set"], inner["device"])
    decided = None
    on_val = f"validation loss ({inner['n_val_units']} units)"
    if start_val is not None and inner["n_val_units"] >= MIN_DECIDING_VAL_UNITS:
        decided = start_val, trained_val, on_val
    else:
        decided = inner_cv(config, history, inner, description)
        if decided is None and start_val is not None:
            decided = start_val, trained_val, on_val
    if decided is None:  # nothing held out to decide on: the trained weights (as before)
        before, after, how = np.array([np.nan]), np.array([np.nan]), "nothing held out"
        keep, t = True, math.nan
    else:
        before, after, how = decided
        keep, t = beats_start(before, after)
    if not keep:
        module.load_state_dict(start_state)
    if start_val is not None:
        history["kept_val_loss"] = float(np.mean(trained_val if keep else start_val))
    record = {
        "start": "logistic regression",
        "kept": "trained" if keep else "start",
        "decided_by": how,
        "start_loss": float(np.mean(before)),
        "best_loss": float(np.mean(after)),
        "improvement_t": float(t),
        "held_out": int(len(before)),
        "trained_steps": steps,
    }
    log.info(
        "%s: %s kept (%s: start %.4f -> trained %.4f, paired t %.2f)",
        description,
        "the trained model" if keep else "the start (logistic regression)",
        how,
        record["start_loss"],
        record["best_loss"],
        t,
    )
    return record


def beats_start(before: np.ndarray, after: np.ndarray) -> tuple[bool, float]:
    """Whether the trained model's held-out losses ``after`` beat the start's ``before`` (paired
    by sequence): a one-sided paired t-test at 5 %; ``(decision, t)``. A lower mean alone is not
    enough: a mean loss a few per cent lower on ~100 units is within its noise, and keeping
    such a model cost pbmc68k_reduced macro-F1 (measured, see README)."""
    diff = np.asarray(before, dtype=float) - np.asarray(after, dtype=float)
    diff = diff[np.isfinite(diff)]
    if len(diff) < 2:
        return bool(len(diff) and diff.mean() > 0), math.nan
    sd = diff.std(ddof=1)
    if sd == 0:
        return bool(diff.mean() > 0), math.inf if diff.mean() > 0 else -math.inf
    t = float(diff.mean() / (sd / math.sqrt(len(diff))))
    from scipy.stats import t as student_t

    return bool(t > student_t.ppf(0.95, len(diff) - 1)), t


@torch.no_grad()
def item_losses(module, unit_loss, items, device) -> np.ndarray:
    """The loss of each sequence of ``items`` (eval mode)."""
    module.eval()
    out = []
    for batch in make_loader(items, 256, shuffle=False, seed=0):
        out.append(unit_loss(module, to_device(batch, device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def inner_cv(config, history: dict, inner: dict, description: str):
    """``(start losses, trained losses, how)`` per held-out sequence of a stratified K-fold on
    the training units: each fold's start is a logistic regression fitted on the other folds,
    trained as many optimizer steps as the run kept (``history["best_step"]``); None when the
    units are too few to fold."""
    steps = int(history["best_step"])
    index, labels, chosen = inner["index"], inner["labels"], inner["train_ids"]
    units = index.unit[chosen]
    unique = np.unique(units)
    seed = inner["seed"]
    if labels.level == "unit":
        strata = labels.codes[unique]
        k = min(INNER_FOLDS, int(np.bincount(strata)[np.unique(strata)].min()))
        from sklearn.model_selection import StratifiedKFold

        folds = StratifiedKFold(max(k, 2), shuffle=True, random_state=seed) if k >= 2 else None
        parts = folds.split(unique, strata) if folds is not None else []
    else:
        k = min(INNER_FOLDS, len(unique))
        from sklearn.model_selection import KFold

        parts = KFold(k, shuffle=True, random_state=seed).split(unique) if k >= 2 else []
    if k < 2 or steps < 1:
        return None
    train_config = inner["train_config"]
    if train_config.schedule == "steps":
        fold_config = replace(train_config, max_epochs=1, min_steps=steps)
    else:
        fold_config = replace(train_config, max_epochs=max(1, int(history["best_epoch"])))
    device, loss_fn, items = inner["device"], inner["loss_fn"], inner["items"]
    before, after = [], []
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):  # the runs after this one are unchanged
        for i, (fold_train, held_out) in enumerate(parts):
            train_ids = chosen[np.isin(units, unique[fold_train])]
            held_ids = chosen[np.isin(units, unique[held_out])]
            _, _, logistic = logistic_baseline(
                inner["values"], inner["y"], train_ids, labels, seed, with_model=True
            )
            module = start_module(config, logistic)
            held = items(held_ids)
            before.append(item_losses(module, inner["unit_loss"], held, device))
            fit(
                module,
                loss_fn,
                items(train_ids),
                None,
                fold_config,
                device=device,
                seed=seed,
                quiet=True,
                description=f"{description}: inner fold {i + 1} of {k}",
            )
            after.append(item_losses(module, inner["unit_loss"], held, device))
    how = f"{k}-fold cross-validation loss on the {len(unique)} training units"
    return np.concatenate(before), np.concatenate(after), how


def check_fit(history: dict, reference: dict, start: dict | None, val_metrics: dict, description):
    """Whether a fit failed, measured against a model that learned only the class prior.

    A fit has *failed* (``history["failed_fit"]``) when the kept model's training loss is not
    ``FAILED_FIT_TOLERANCE`` below the class-prior entropy of the training labels (it learned
    nothing), or when on the validation units both its loss is not below the class prior's
    and its AUROC is at chance (<= 0.5): noise features memorized by a wide logistic start
    (tests/test_start.py). A validation loss above the prior's with a better-than-chance AUROC
    is an overconfident model, not a failed one (``validation_above_prior``: a caution); a
    validation AUROC <= 0.5 alone is ``validation_at_chance`` (a caution).

    Records the figures: ``prior_loss``, ``prior_val_loss``, ``kept_train_loss``,
    ``kept_val_loss``, ``validation_auroc``, ``validation_balanced_accuracy``."""
    history["prior_loss"] = reference["train"]
    history["prior_val_loss"] = reference["val"]
    auroc = val_metrics.get("auroc")
    history["validation_auroc"] = auroc
    history["validation_balanced_accuracy"] = val_metrics.get("balanced_accuracy")
    final = history["final_train_loss"]
    if start is not None and start["kept"] == "start":
        final = history["start_loss"]
    history["kept_train_loss"] = final
    train_failed = bool(final > reference["train"] * (1 - FAILED_FIT_TOLERANCE))
    kept_val = history.get("kept_val_loss")
    above_prior = bool(
        reference["val"] is not None
        and kept_val is not None
        and kept_val > reference["val"] * (1 - FAILED_FIT_TOLERANCE)
    )
    at_chance = bool(auroc is not None and np.isfinite(auroc) and auroc <= 0.5)
    history["validation_above_prior"] = above_prior
    history["validation_at_chance"] = at_chance
    history["failed_fit"] = train_failed or (above_prior and at_chance)
    return history


def fit_cautions(fitted: ClassifierFit, prefix: str = "") -> list[str]:
    """The cautions of a fit that failed (no better than the class prior), whose validation
    loss is above the class prior's, or whose validation AUROC is at chance, for the model and
    the linear path alone (see :func:`check_fit`)."""
    out = []
    for name, history in (("model", fitted.history), ("linear path alone", fitted.linear_history)):
        val = history.get("kept_val_loss")
        prior_val = history.get("prior_val_loss")
        auroc = history.get("validation_auroc")
        if history.get("failed_fit"):
            out.append(
                f"{prefix}failed fit: the {name} does no better than the class frequencies alone "
                f"(training loss {history['kept_train_loss']:.3f}"
                + (
                    f", validation loss {val:.3f} vs {prior_val:.3f}, validation AUROC {auroc:.2f}"
                    if val is not None and prior_val is not None and auroc is not None
                    else ""
                )
                + f"; class-prior entropy {history['prior_loss']:.3f}): the features may not "
                "predict the labels; check the label and the inputs, or raise --epochs / --lr"
            )
        elif history.get("validation_above_prior"):
            out.append(
                f"{prefix}the {name}'s validation loss ({val:.3f}) is above that of the class "
                f"frequencies alone ({prior_val:.3f}): its probabilities are overconfident"
                + (f" (validation AUROC {auroc:.2f})" if auroc is not None else "")
            )
        elif history.get("validation_at_chance"):
            out.append(
                f"{prefix}the {name}'s validation AUROC is at chance ({auroc:.2f}): its test "
                "metrics may be luck"
            )
    return out


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
                listed(absent),
                labels.key,
            )
        return
    small = [f"{labels.classes[c]!r} ({counts[c]})" for c in range(len(counts)) if counts[c] < 2]
    if small:
        raise InputError(
            f"class(es) {listed(small)} of {labels.key!r} have fewer than 2 members in the "
            "training split: drop or merge rare classes, or give more data"
        )


def class_weights(y: torch.Tensor, train_ids, n_classes: int, device) -> torch.Tensor:
    """Balanced class weights from the training labels (classes absent from them weigh 1)."""
    train_y = y[train_ids].numpy().ravel()
    train_y = train_y[train_y >= 0]
    present = np.unique(train_y)
    w = np.ones(n_classes)
    from sklearn.utils.class_weight import compute_class_weight

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


def cv_record(
    folds: Folds, fold_metrics: list[dict], fold_starts: dict, *, seed: int, group_key=None
) -> dict:
    """What ``uns[key]["cv"]`` and the model's config say of a cross-validation: how the folds
    were drawn, each fold's test metrics, their mean ± sd and the paired differences with the
    corrected resampled-t interval (:func:`~anndata_rnn.metrics.cv_summary`)."""
    return {
        "k": len(folds),
        "scheme": folds.scheme,
        "seed": int(seed),
        "group_key": group_key or "",
        "metrics_of": "the fold models: mean over the folds' test units; the saved model is "
        "retrained on every labelled unit and has no test split of its own",
        "folds": {str(i): m for i, m in enumerate(fold_metrics)},
        **cv_summary(fold_metrics, test_train_ratio=test_train_ratio(folds)),
        "start": fold_starts,
    }


def fit_options(
    *, prep, prepare: dict, linear_path: bool, class_weights: bool, quiet: bool, split: tuple
) -> dict:
    """What every fit of one ``classify`` run shares: the preprocessing to fit (``prep()``), how
    to encode (``prepare``), the model's switches, and the split settings recorded in the config
    (``split``: val_fraction, test_fraction, split_key, group_key; a group key only when given)."""
    val_fraction, test_fraction, split_key, group_key = split
    train = {"val_fraction": val_fraction, "test_fraction": test_fraction, "split_key": split_key}
    if group_key:
        train["group_key"] = group_key
    return {
        "prep": prep,
        "prepare": prepare,
        "linear_path": linear_path,
        "class_weights": class_weights,
        "quiet": quiet,
        "train": train,
    }


def cross_validate(run, folds: Folds, train, *, group_key=None):
    """Train and test on every fold: ``train(split)`` fits one fold (its test units are then
    ``run.ids["test"]``). Returns the record of :func:`cv_record`, every fold's failed-fit
    cautions (``cv fold k: ...``) and the out-of-fold probabilities (NaN where no fold tested)."""
    fold_metrics, fold_starts, cautions, oof = [], {}, [], None
    for k, split in enumerate(folds):
        log.info("cross-validation fold %d of %d", k + 1, len(folds))
        fitted = train(split)
        fold_metrics.append(fitted.metrics)
        fold_starts[str(k)] = fitted.starts
        cautions += fit_cautions(fitted, prefix=f"cv fold {k + 1}: ")
        tested = run.ids["test"]
        oof = np.full_like(fitted.proba, np.nan) if oof is None else oof
        oof[tested] = fitted.proba[tested]
    record = cv_record(folds, fold_metrics, fold_starts, seed=run.seed, group_key=group_key)
    log_cv(record)
    return record, cautions, oof


def cv_config(record: dict) -> dict:
    """What the saved model's config says of the cross-validation behind its metrics."""
    return {k: record[k] for k in ("k", "scheme", "seed", "metrics_of")}


def write_folds(run, folds: Folds) -> str:
    """``{key}_fold`` in obs (var): the fold (1..K) whose test part held each unit; returns its
    path."""
    fold_of = np.array([str(f) if f else None for f in tested_in(folds)], dtype=object)
    names = [str(k) for k in range(1, len(folds) + 1)]
    rows = broadcast_to_rows(run.index, fold_of)
    return run.index.write_column(run.target, f"{run.key}_fold", rows, categories=names)


def out_of_fold(fitted: ClassifierFit, oof: np.ndarray) -> ClassifierFit:
    """The final model's fit with the out-of-fold probabilities of every tested sequence."""
    seen = ~np.isnan(oof).any(axis=tuple(range(1, oof.ndim)))
    fitted.proba[seen] = oof[seen]
    return fitted


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


def output_targets(layout: str, key: str, folds: bool = False) -> list[tuple[str, str]]:
    """Where a classifier writes (``folds``: the ``{key}_fold`` column of a cross-validation)."""
    rows, mats = Layout.of(layout).unit_axis, Layout.of(layout).unit_matrices
    return [
        (rows, f"{key}_pred"),
        (rows, f"{key}_conf"),
        (rows, f"{key}_split"),
        *([(rows, f"{key}_fold")] if folds else []),
        (mats, f"{key}_proba"),
        (mats, f"X_{key}"),
        ("uns", key),
    ]


def split_units(labels: Labels, index: SequenceIndex) -> tuple[np.ndarray, np.ndarray | None]:
    """Which units a split may use and their strata: labelled units by their class; with
    obs-series step labels, every unit with a labelled step (no strata)."""
    if labels.level == "unit":  # split by unit (series / gene / cell)
        return labels.codes >= 0, labels.codes
    targets = labels.sequence_targets(index, np.arange(index.n_sequences))
    return (targets >= 0).any(1), None


def check_split_settings(cv, group_key, split_key) -> None:
    """A split column fixes the split: it excludes cross-validation and groups."""
    if (cv or group_key) and split_key is not None:
        raise InputError(
            "a split column (split_key) fixes the split: give cv or group_key, or split_key, not both"
        )


def apply_classifier(opened, key: str, batch_size: int) -> dict:
    """Predict with a saved classifier; writes the same keys as training (no split).

    ``opened``: the :class:`~anndata_rnn.runs.OpenedModel` of ``predict`` (model, index, data).
    """
    model, index, target = opened.model, opened.index, opened.target
    classes = np.asarray(model.classes, dtype=object)
    enc = opened.stream(
        lambda x, n: predict_proba(model.module, x, n, opened.device, batch_size),
        batch_size,
        spill={1: "embedding"},  # grows with the data; stays on disk when there is a scratch
    )
    proba, embedding = np.asarray(enc.outputs[0]), enc.outputs[1]
    written = write_results(
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
        out["metrics"] = {"rnn": test_metrics(index, labels, proba, np.arange(index.n_sequences))}
    return out


def write_results(target, index: SequenceIndex, classes, level, proba, embedding, key):
    """A classifier's outputs back through the sequence index: per unit / per step values into
    obs/var (labels, confidence) and obsm/varm (probabilities, embedding); returns the paths."""
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
        index.write_matrix(target, f"X_{key}", as_float32(rows_embedding)),
    ]

"""Sequence classification: labels, probabilities and embeddings, beside a logistic baseline."""

from __future__ import annotations

import logging

import numpy as np
from anndata import AnnData

from .. import classification as fitting
from ..classification import (
    ClassifierFit,
    check_training_classes,
    fit_cautions,
    log_cv,
    test_metrics,
    train_classifier,
    write_results,
)
from ..errors import InputError
from ..networks import architecture
from ..networks.classifier import predict_proba
from ..preprocessing import Preprocessor
from ..runs import OpenedModel, check_keys_free, start_training, task_api
from ..sequences import (
    Labels,
    SequenceSpec,
    broadcast_to_rows,
    read_labels,
)
from ..splits import groups_from_column, make_folds, tested_in
from ..streaming import DEFAULT_CHUNK_ROWS, should_stream

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
    n_top_genes: int | str | None = "auto",
    gene_subset: str | None = None,
    scale: str = "auto",
    conv: str | tuple[int, ...] | None = "auto",
    linear_path: bool = True,
    stream: bool | str = "auto",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    hidden=(128, 64),
    cell: str = "lstm",
    bidirectional: bool = False,
    dropout: float = 0.2,
    max_epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    patience: int = 10,
    min_steps: int | None = None,
    class_weights: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_key: str | None = None,
    group_key: str | None = None,
    cv: int | None = None,
    seed: int = 0,
    device: str = "auto",
    amp: bool = False,
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
        ``"auto"`` selects 2,000 in a wide profile (more than 4,000 genes or 128 steps); 0 or
        None keeps every gene. In var-series ``gene_subset`` selects which genes become
        sequences.
    scale
        ``"feature"`` standardizes each feature with training statistics; ``"sequence"``
        z-scores each sequence on its own (shape only); ``"auto"``: see ``conv``.
    linear_path
        Add a linear layer on the flattened standardized input to the recurrent head's logits
        (Wide & Deep), started at the logistic baseline's fit (recurrent head at zero) and
        kept there unless training beats it on held-out data
        (:func:`~anndata_rnn.classification.keep_or_start`; ``uns[key]["start"]``). The linear
        path alone, from the same start, is reported too (``metrics["linear_path"]``).
    stream
        Train without holding the encoded sequences in memory (profile layout): batches are
        read from X (kept sparse) and encoded when the loop needs them, in the same order and
        with the same numbers as in memory; the preprocessing and the logistic baseline are
        fitted on a seeded random 20,000 training sequences. ``"auto"``: when the encoded
        sequences would exceed 1 GiB (README "Large files"). When X is read from the file
        (:func:`anndata_rnn.streaming.open_lazy`, as the command line does for profile data),
        shuffled batches come from blocks of 256 consecutive cells, as many blocks as fit in
        ``chunk_rows`` cells read and shuffled together (a file is read fast in slices, slowly
        row by row);
        ``uns[key]["params"]["batch_order"]`` says which order a run used.
    chunk_rows
        Streamed training from the file: cells read and encoded at a time (the shuffle buffer;
        8192 cells of 2,000 genes is 64 MB).
    hidden, cell, bidirectional, dropout, conv
        Encoder architecture (stacked layer sizes, ``"lstm"`` or ``"gru"``). Sequences longer
        than 64 steps are averaged in windows before the recurrence, whose states are
        mean-pooled. ``conv`` (LSTM-FCN branch), ``"auto"``: see :func:`.classification.shape_series`.
    max_epochs, batch_size, lr, patience, min_steps, class_weights
        Training, counted in optimizer steps: ``max_epochs`` passes but at least ``min_steps``
        steps (up to 4 × the floor while validation improves), batches capped at a quarter of the training
        set, early stopping after ``patience`` passes (at least ``min_steps / 2`` steps) without
        a better validation loss (best weights restored), the learning rate halved on plateaus;
        balanced class weights for imbalance. Fits no better than the class prior are cautions
        (a ``UserWarning``; :func:`~anndata_rnn.classification.check_fit`), per ``cv`` fold too.
        ``min_steps=None``: 600 (or the environment's ``ANNDATA_RNN_MIN_STEPS``).
    val_fraction, test_fraction, split_key
        Split by sequence (never by steps of one sequence), stratified where labels allow, or
        from a column of train/val/test.
    group_key
        Column (obs, or var for var-series) naming each unit's group (donor, sample, batch):
        the units of one group go to one part of the split and are tested in one ``cv`` fold
        (``StratifiedGroupKFold``); the fractions then count groups.
    cv
        K-fold cross-validation by unit (stratified where possible): RNN, linear path and
        baseline are trained and tested on every fold; ``uns[key]["cv"]`` holds the per-fold
        metrics, mean ± sd and the paired difference model − baseline with a 95 % interval
        (the corrected resampled t of Nadeau & Bengio, 2003), the fold scheme and seed.
        Written predictions are out-of-fold for labelled units and ``{key}_fold`` says which
        fold tested each unit; the saved model is then trained on every labelled unit
        (``val_fraction`` kept for early stopping; its config records ``cv`` and that its
        metrics are the fold models' means).
    seed, device
        Seed for python/numpy/torch and the split; ``"auto"`` uses CUDA when available.
    amp
        Mixed precision on a CUDA GPU (bfloat16 where the GPU supports it, else float16 with a
        gradient scaler), for training and inference; ignored on the CPU (logged). Results
        differ from float32 ones within the tolerance stated in the README ("GPU").
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
        train_config=fitting.step_schedule(max_epochs, batch_size, lr, patience, min_steps, amp),
        seed=seed,
        device=device,
        copy=copy,
        gene_subset=gene_subset,
    )
    target, key = run.target, run.key
    labels = read_labels(target, run.index, label_key)
    for note in labels.notes:
        log.info(note)
    fold_target = [(output_targets(layout, key)[0][0], f"{key}_fold")] if cv else []
    check_keys_free(target, output_targets(layout, key) + fold_target, overwrite)
    scaling, run.architecture = fitting.shape_options(run, labels.level, scale, conv)
    if labels.level == "unit":  # split by unit (series / gene / cell)
        usable, strata = labels.codes >= 0, labels.codes
    else:  # obs-series step labels: one sequence per unit, usable when any step is labelled
        usable = (labels.sequence_targets(run.index, np.arange(run.index.n_sequences)) >= 0).any(1)
        strata = None
    options = {
        "prep": lambda: Preprocessor(
            layout=layout, scale=scaling, use_time=time_key is not None and layout != "profile"
        ),
        "prepare": {
            "normalize": normalize,
            "n_top_genes": n_top_genes,
            "gene_subset": gene_subset,
            "order_key": order_key,
            "stream": should_stream(run.index, len(run.source.feature_names), stream),
            "chunk_rows": chunk_rows,
        },
        "linear_path": linear_path,
        "class_weights": class_weights,
        "quiet": quiet,
        "train": {
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "split_key": split_key,
        },
    }
    cv_record, cautions, written = None, [], []
    if (cv or group_key) and split_key is not None:
        raise InputError(
            "a split column (split_key) fixes the split: give cv or group_key, or split_key, not both"
        )
    groups = groups_from_column(target, run.index, group_key) if group_key else None
    if group_key:
        options["train"]["group_key"] = group_key
        log.info("group_key %r: the units of each of its %d groups stay together", group_key,
                 len(np.unique(groups)))  # fmt: skip
    if cv:
        folds = make_folds(
            run.index.n_units,
            k=cv,
            usable=usable,
            strata=strata,
            val_fraction=val_fraction,
            seed=seed,
            groups=groups,
        )
        fold_metrics, fold_starts, oof = [], {}, None
        for k, split in enumerate(folds):
            log.info("cross-validation fold %d of %d", k + 1, cv)
            fitted = _train(run, labels, split, options)
            fold_metrics.append(fitted.metrics)
            fold_starts[str(k)] = fitted.starts
            cautions += fit_cautions(fitted, prefix=f"cv fold {k + 1}: ")
            tested = run.ids["test"]
            oof = np.full_like(fitted.proba, np.nan) if oof is None else oof
            oof[tested] = fitted.proba[tested]
        cv_record = fitting.cv_record(
            folds, fold_metrics, fold_starts, seed=seed, group_key=group_key
        )
        log_cv(cv_record)
        fold_of = np.array([str(f) if f else None for f in tested_in(folds)], dtype=object)
        names = [str(k) for k in range(1, cv + 1)]  # the fold that tested each unit
        fold_rows = broadcast_to_rows(run.index, fold_of)
        written.append(run.index.write_column(target, f"{key}_fold", fold_rows, categories=names))
        split = run.choose_split(
            split_key=None, val_fraction=val_fraction, test_fraction=0.0, usable=usable,
            strata=strata, groups=groups,
        )  # fmt: skip
        cv_config = {k: cv_record[k] for k in ("k", "scheme", "seed", "metrics_of")}
        options["train"] |= {"test_fraction": 0.0, "cv": cv_config}
        fitted = _train(run, labels, split, options)
        metrics = cv_record["mean"]
        seen = ~np.isnan(oof).any(axis=tuple(range(1, oof.ndim)))
        fitted.proba[seen] = oof[seen]  # out-of-fold predictions for every tested sequence
    else:
        split = run.choose_split(
            split_key=split_key,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            usable=usable,
            strata=strata,
            groups=groups,
        )
        fitted = _train(run, labels, split, options)
        metrics = fitted.metrics
        cautions = run.test_cautions(labels)
    if not metrics:
        log.warning("no test split (test_fraction=0): no metrics computed")
    cautions += fit_cautions(fitted, prefix="saved model: " if cv else "")
    index, prep = run.index, run.prep
    written += write_results(
        target, index, labels.classes, labels.level, fitted.proba, fitted.embedding, key
    )
    written.append(run.write_split())
    classes = [str(c) for c in labels.classes]
    return run.finish(
        fitted.config,
        fitted.module,
        head={"label_key": label_key, "level": labels.level, "classes": classes},
        params={
            "normalize": normalize,
            "n_top_genes": n_top_genes,
            "gene_subset": gene_subset,
            "scale": scale,
            "conv": conv,
            "linear_path": linear_path,
            "cv": cv or 0,
            "group_key": group_key or "",
            **run.stream_params(
                stream,
                chunk_rows,
                fitting.schedule_for(len(run.ids["train"]), run.train_config)["batch_size"],
            ),
        },
        preprocessing={
            "normalized": prep.normalize,
            "log1p": prep.log1p,
            "n_features": len(prep.features),
            "n_imputed": fitted.imputed,
            "fitted_on_sequences": run.fit_sequences,
        },
        metrics=metrics,
        written=written,
        history=fitted.history,
        tail={"start": fitted.starts, **({"cv": cv_record} if cv_record else {})},
        notes=labels.notes,
        arrays={"classes": np.asarray(classes, dtype=object)},
        title=(f"{cv} cross-validation folds (mean)" if cv else "test split")
        + (f", whole groups of {group_key}" if group_key else ""),
        cautions=cautions,
    )


def _train(run, labels: Labels, split: np.ndarray, options: dict) -> ClassifierFit:
    """Fit the preprocessing on the training units of ``split``, then the classifier, the
    linear path alone and the baseline (:func:`~anndata_rnn.classification.train_classifier`)."""
    check_training_classes(labels, run.index, split)
    enc = run.prepare(split, options["prep"](), **options["prepare"])
    return train_classifier(
        run.index,
        labels,
        enc,
        run.ids,
        keys=run.spec.keys(),
        architecture=run.architecture,
        train_config=run.train_config,
        device=run.device,
        seed=run.seed,
        options=options,
    )


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

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
    output_targets,
    train_classifier,
    write_results,
)
from ..networks import architecture
from ..options import DEFAULTS, DOCS, doc_params
from ..preprocessing import Preprocessor
from ..runs import check_keys_free, start_training, task_api
from ..sequences import (
    Labels,
    Layout,
    SequenceSpec,
    read_labels,
)
from ..splits import groups_from_column, make_folds
from ..streaming import should_stream

log = logging.getLogger("anndata_rnn")

#: the defaults of classify (:mod:`anndata_rnn.options`: the command line has the same)
DEFAULT = DEFAULTS["classify"]


@task_api
@doc_params(**DOCS)
def classify(
    adata: AnnData,
    *,
    label_key: str,
    layout: str = DEFAULT.layout,
    series_key: str | None = DEFAULT.series_key,
    time_key: str | None = DEFAULT.time_key,
    series_subset: list[str] | None = DEFAULT.series_subset,
    order_key: str | None = DEFAULT.order_key,
    chunk_size: int = DEFAULT.chunk_size,
    layer: str | None = DEFAULT.layer,
    use_rep: str | None = DEFAULT.use_rep,
    normalize: str = DEFAULT.normalize,
    n_top_genes: int | str | None = DEFAULT.n_top_genes,
    gene_subset: str | None = DEFAULT.gene_subset,
    scale: str = DEFAULT.scale,
    conv: str | tuple[int, ...] | None = DEFAULT.conv,
    linear_path: bool = DEFAULT.linear_path,
    stream: bool | str = DEFAULT.stream,
    chunk_rows: int = DEFAULT.chunk_rows,
    hidden=DEFAULT.hidden,
    cell: str = DEFAULT.cell,
    bidirectional: bool = DEFAULT.bidirectional,
    dropout: float = DEFAULT.dropout,
    max_epochs: int = DEFAULT.max_epochs,
    batch_size: int = DEFAULT.batch_size,
    lr: float = DEFAULT.lr,
    patience: int = DEFAULT.patience,
    min_steps: int | None = DEFAULT.min_steps,
    class_weights: bool = DEFAULT.class_weights,
    val_fraction: float = DEFAULT.val_fraction,
    test_fraction: float = DEFAULT.test_fraction,
    split_key: str | None = DEFAULT.split_key,
    group_key: str | None = DEFAULT.group_key,
    cv: int | None = DEFAULT.cv,
    seed: int = DEFAULT.seed,
    device: str = DEFAULT.device,
    amp: bool = DEFAULT.amp,
    key_added: str = DEFAULT.key_added,
    overwrite: bool = DEFAULT.overwrite,
    quiet: bool = DEFAULT.quiet,
    copy: bool = DEFAULT.copy,
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
    {doc_sequences}
    {doc_profile}
    {doc_reading}
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
    {doc_run}

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
    check_keys_free(target, output_targets(layout, key, folds=bool(cv)), overwrite)
    scaling, run.architecture = fitting.shape_options(run, labels.level, scale, conv)
    usable, strata = fitting.split_units(labels, run.index)
    options = fitting.fit_options(
        prep=lambda: Preprocessor(
            layout=layout,
            scale=scaling,
            use_time=time_key is not None and Layout.of(layout).is_time_series,
        ),
        prepare={
            "normalize": normalize,
            "n_top_genes": n_top_genes,
            "gene_subset": gene_subset,
            "order_key": order_key,
            "stream": should_stream(run.index, len(run.source.feature_names), stream),
            "chunk_rows": chunk_rows,
        },
        linear_path=linear_path,
        class_weights=class_weights,
        quiet=quiet,
        split=(val_fraction, test_fraction, split_key, group_key),
    )
    cv_record, cautions, written = None, [], []
    fitting.check_split_settings(cv, group_key, split_key)
    groups = groups_from_column(target, run.index, group_key) if group_key else None
    if cv:
        folds = make_folds(
            run.index.n_units, k=cv, usable=usable, strata=strata, val_fraction=val_fraction,
            seed=seed, groups=groups,
        )  # fmt: skip
        cv_record, cautions, oof = fitting.cross_validate(
            run, folds, lambda split: _train(run, labels, split, options), group_key=group_key
        )
        written.append(fitting.write_folds(run, folds))
        split = run.choose_split(
            split_key=None, val_fraction=val_fraction, test_fraction=0.0, usable=usable,
            strata=strata, groups=groups,
        )  # fmt: skip
        options["train"] |= {"test_fraction": 0.0, "cv": fitting.cv_config(cv_record)}
        fitted = fitting.out_of_fold(_train(run, labels, split, options), oof)
        metrics = cv_record["mean"]
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
        preprocessing=run.preprocessing_record(fitted.imputed, log1p=prep.log1p),
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
        keys=run.spec.model_keys(),
        architecture=run.architecture,
        train_config=run.train_config,
        device=run.device,
        seed=run.seed,
        options=options,
    )

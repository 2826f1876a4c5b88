"""Sequence forecasting: next steps and horizons of time-course expression, beside persistence
and a linear autoregression (the protocol: :func:`forecast`; the forecasts themselves:
:mod:`anndata_rnn.forecasting`).

Missing inputs are filled causally and are never targets; every result is returned in the units
of the input matrix (after ``normalize_total`` + ``log1p`` when that was applied).
"""

from __future__ import annotations

import logging

import numpy as np
from anndata import AnnData

from ..errors import InputError
from ..forecasting import (
    AR_FORM_TEXT,
    check_settings,
    fit_ar_baseline,
    fit_cautions,
    forecast_config,
    output_targets,
    parse_future,
    predict_all,
    score_forecasts,
    train_with_ablation,
    write_forecasts,
)
from ..networks import architecture
from ..options import DEFAULTS, DOCS, doc_params
from ..preprocessing import Preprocessor, encode
from ..runs import check_keys_free, start_training, task_api
from ..sequences import Layout, SequenceSpec
from ..training import TrainConfig

log = logging.getLogger("anndata_rnn")

#: the defaults of forecast (:mod:`anndata_rnn.options`: the command line has the same)
DEFAULT = DEFAULTS["forecast"]

AR_FORM_CHOICES = ("auto", "dense", "per_gene")


@task_api
@doc_params(**DOCS)
def forecast(
    adata: AnnData,
    *,
    layout: str = DEFAULT.layout,
    series_key: str | None = DEFAULT.series_key,
    time_key: str | None = DEFAULT.time_key,
    series_subset: list[str] | None = DEFAULT.series_subset,
    layer: str | None = DEFAULT.layer,
    use_rep: str | None = DEFAULT.use_rep,
    normalize: str = DEFAULT.normalize,
    n_top_genes: int | str | None = DEFAULT.n_top_genes,
    gene_subset: str | None = DEFAULT.gene_subset,
    horizon: int | None = DEFAULT.horizon,
    future_times=DEFAULT.future_times,
    holdout_steps: int = DEFAULT.holdout_steps,
    loss: str = DEFAULT.loss,
    residual: bool = DEFAULT.residual,
    ar_lags: int = DEFAULT.ar_lags,
    linear_path: bool = DEFAULT.linear_path,
    ar_form: str = DEFAULT.ar_form,
    hidden=DEFAULT.hidden,
    cell: str = DEFAULT.cell,
    bidirectional: bool = DEFAULT.bidirectional,
    dropout: float = DEFAULT.dropout,
    max_epochs: int = DEFAULT.max_epochs,
    batch_size: int = DEFAULT.batch_size,
    lr: float = DEFAULT.lr,
    patience: int = DEFAULT.patience,
    min_steps: int | None = DEFAULT.min_steps,
    val_fraction: float = DEFAULT.val_fraction,
    test_fraction: float = DEFAULT.test_fraction,
    split_key: str | None = DEFAULT.split_key,
    seed: int = DEFAULT.seed,
    device: str = DEFAULT.device,
    amp: bool = DEFAULT.amp,
    key_added: str = DEFAULT.key_added,
    overwrite: bool = DEFAULT.overwrite,
    quiet: bool = DEFAULT.quiet,
    copy: bool = DEFAULT.copy,
):
    """Train an LSTM/GRU forecaster of time-course expression and write its forecasts.

    Parameters
    ----------
    adata
        The AnnData (not modified when ``copy=True``).
    layout
        ``"obs-series"``: the observations of a series ordered by time form a sequence whose
        steps have all the genes (or ``use_rep`` columns) as features; ``"var-series"``: each
        gene's values over the observations of a series form a one-feature sequence.
    series_key, time_key
        obs columns naming the series and the numeric time of each observation. Time gaps are
        an input of the network, so irregular sampling (0, 5, 12, 21 h, ...) is handled.
    series_subset
        Only these series (e.g. ``["cdc15"]``).
    {doc_reading}
    horizon
        Steps to forecast beyond the end of every sequence (autoregressive rollout), written to
        ``uns[key]["future"]``. Default 1 (or ``len(future_times)``); 0 writes no future.
    future_times
        Time points of those future steps (after every series' last time point); default: each
        series' last time plus multiples of its median time gap.
    holdout_steps
        Cut the last K steps of every sequence off before fitting and forecast them by rollout;
        the metrics are then computed on these steps (of the test units, or of all units when
        ``test_fraction=0``).
    loss
        ``"mse"`` or ``"huber"`` (robust to outliers), on standardized values.
    residual
        The network predicts the change from the current step (it starts at persistence).
    ar_lags
        Steps the linear autoregression (baseline and linear path) sees.
    linear_path
        Add a linear autoregression on the last ``ar_lags`` steps to the recurrent forecast
        (LSTNet's highway), started at the ridge baseline's fit. Every run also trains the AR
        path alone the same way and reports it (``metrics["linear_path"]``).
    ar_form
        Form of the linear AR (baseline and AR path): ``"dense"`` (every gene from the lags of
        every gene: ``ar_lags × (genes + 1) × genes`` coefficients), ``"per_gene"`` (each gene
        from its own lags and the time gaps: memory and time linear in the genes) or ``"auto"``
        (dense up to :data:`~anndata_rnn.baselines.DENSE_AR_MAX_GENES` features, per gene
        above). The per-gene form adds a low-rank cross-gene term: the lags' scores on the first
        ``ar_rank`` principal axes of the training inputs, the rank (0-16) chosen with the ridge
        by the rollout of the last K training steps (K = ``holdout_steps``, at least 1) from a
        refit without them (``params["ar_rank_rollout_mse"]``), the penalty by leave-one-out
        error. The form used is in ``uns[key]["params"]
        ["ar_form_used"]`` (and ``ar_rank``, ``ar_parameters``), the model config and the title of the printed
        table.
    hidden, cell, bidirectional, dropout
        Recurrent architecture; forecasting is causal, so ``bidirectional`` must stay False.
    max_epochs, batch_size, lr, patience, min_steps
        Adam counted in optimizer steps (at least ``min_steps``; see
        :func:`anndata_rnn.tl.classify`), early stopping on the validation units' one-step loss;
        the untrained (persistence or AR) weights compete for the best.
    val_fraction, test_fraction, split_key
        Split of the units (series or genes), seeded, or from a train/val/test column. With
        ``holdout_steps`` nothing is fitted on any unit's last K steps (a pure temporal
        holdout): the headline metric is the rollout of the test units' last K steps.
    {doc_run}

    Returns
    -------
    The fitted :class:`~anndata_rnn.Model`; with ``copy=True`` a tuple ``(model, adata_copy)``.

    Writes (``key`` = ``key_added``):

    - ``layers[f"{key}_forecast"]``: every value predicted from the steps before it (one step
      ahead; NaN at the first step of a series and for genes the model does not use). With
      ``use_rep`` (obs-series) the forecast of the representation goes to
      ``obsm[f"{key}_forecast"]`` instead.
    - var-series with ``holdout_steps``: ``varm[f"{key}_forecast"]``, the rollout forecast of the
      last K time points of every gene (columns: series by series, their times in
      ``uns[key]["holdout_columns"]``). obs-series with ``holdout_steps``: the same forecasts in
      ``uns[key]["holdout"]`` (long form like ``future``).
    - ``obsm[f"X_{key}"]`` (per observation) or ``varm[f"X_{key}"]`` (per gene): hidden states.
    - ``obs``/``var`` ``f"{key}_split"``.
    - ``uns[key]``: ``metrics`` (``rnn``, ``persistence``, ``linear_ar``: mse, mae, r2,
      pearson_r = mean per-gene Pearson r), ``evaluation``, ``future`` (``series``, ``unit``,
      ``time``, ``step``, ``values`` rows × features, ``features``), params, history, versions.
    """
    check_settings(layout, bidirectional, loss, ar_lags, holdout_steps, time_key, use_rep)
    if ar_form not in AR_FORM_CHOICES:
        raise InputError(f"ar_form must be one of {', '.join(AR_FORM_CHOICES)}, got {ar_form!r}")
    future_times, horizon = parse_future(future_times, horizon)
    spec = SequenceSpec(
        layout, series_key, time_key, series_subset, None, 32, layer, use_rep, key_added
    )
    run = start_training(
        adata,
        spec,
        architecture=architecture(hidden, cell, dropout, False),
        train_config=TrainConfig(
            max_epochs, batch_size, lr, patience, schedule="steps", min_steps=min_steps, amp=amp
        ),
        seed=seed,
        device=device,
        copy=copy,
        gene_subset=gene_subset,
    )
    target, key, index = run.target, run.key, run.index
    index.check_holdout(holdout_steps)
    index.check_future_after(future_times)
    check_keys_free(target, output_targets(layout, key), overwrite)
    split = run.choose_split(
        split_key=split_key, val_fraction=val_fraction, test_fraction=test_fraction
    )
    if not (split == "train").any():
        raise InputError("the split has no training units: lower val/test fractions")
    # a pure temporal holdout: the last K steps of every sequence (training units included) are
    # seen by no fit (preprocessing, network, AR); the scored values are among them
    train_index = index.truncate(holdout_steps)
    prep = Preprocessor(layout=layout, scale="feature", use_time=True, imputation="causal")
    train_enc = run.prepare(
        split,
        prep,
        normalize=normalize,
        n_top_genes=n_top_genes,
        gene_subset=gene_subset,
        fit_index=train_index,
    )
    ids = run.ids
    config = forecast_config(
        run, spec, train_enc, ar_form, linear_path, residual, horizon, future_times,
        holdout_steps, loss, ar_lags, val_fraction, test_fraction, split_key, seed,
    )  # fmt: skip
    arch, form = config["architecture"], config["architecture"]["ar_form"]
    # the linear AR baseline, fitted on the same training steps; the AR path starts from it
    ar, rank_rollout, rank, n_ar, ar_description = fit_ar_baseline(
        train_enc, prep, ids, ar_lags, holdout_steps, arch
    )
    (module, history), (alone_module, alone_history) = train_with_ablation(
        config, train_enc, prep, ids, ar, run.train_config, device=run.device, seed=seed,
        quiet=quiet,
    )  # fmt: skip
    full_enc = train_enc if train_index is index else encode(index, run.source, prep)
    context_enc = train_enc  # every sequence without its held-out steps (all of it when K = 0)
    results = predict_all(
        module,
        prep,
        index,
        full_enc,
        context_enc,
        config,
        future_times,
        run.device,
        ar=ar,
        others={"linear_path": alone_module},
    )
    cautions = run.test_cautions()
    failed = [
        *fit_cautions("network", history),
        *fit_cautions("linear path alone", alone_history, warm_start=False),
    ]
    for caution in failed:  # printed under the metrics table and stored in uns
        log.info(caution)
    cautions += failed

    metrics, evaluation = score_forecasts(
        index, full_enc, prep, results, ids, holdout_steps, ar_description
    )

    written = [*write_forecasts(target, index, prep, run.source, results, key), run.write_split()]
    return run.finish(
        config,
        module,
        head={},
        params={
            "horizon": horizon,
            "holdout_steps": holdout_steps,
            "loss": loss,
            "residual": residual,
            "ar_lags": ar_lags,
            "linear_path": linear_path,
            "ar_form": ar_form,
            "ar_form_used": form,
            "ar_rank": rank,
            "ar_rank_chosen_by": "temporal holdout" if rank_rollout else "leave-one-out",
            "ar_rank_rollout_mse": {str(r): float(e) for r, e in rank_rollout.items()},
            "ar_parameters": n_ar,
            "normalize": normalize,
            "n_top_genes": n_top_genes,
            "gene_subset": gene_subset,
        },
        preprocessing={
            "normalized": prep.normalize,
            "n_features": train_enc.n_features,
            "features": np.asarray(prep.features, dtype=object)
            if Layout.of(layout).steps_are_observations
            else np.asarray(["value"], dtype=object),
            "n_imputed": full_enc.imputed,
            "units": "log1p(normalize_total)" if prep.normalize else "input",
        },
        metrics=metrics,
        written=written,
        history=history,
        tail={"evaluation": evaluation, **results.uns_entries()},
        title=f"{evaluation_title(evaluation)}; {AR_FORM_TEXT[form]} linear AR",
        cautions=cautions,
    )


def evaluation_title(evaluation: dict) -> str:
    """What the metrics were computed on, for the printed table."""
    if "kind" not in evaluation:
        return "test split"
    units = "test" if evaluation.get("units") == "test" else "all"
    return f"{units} sequences ({evaluation['n_sequences']}), {evaluation['kind']}"

"""Forecasting with the AR path: simulated VAR(1) (20 series) and the yeast cdc15 forecast.

Runs the real task ``anndata_rnn.tl.forecast`` end to end. The task does not yet pass the new
architecture keys, so this script wraps two names inside ``anndata_rnn.tl._forecast`` (the
wiring the lead will do in the task):

- ``build_module``: adds ``architecture["linear_path"] = True`` (and ``recurrent=False`` for the
  linear-only ablation) to the config before the network is built;
- ``fit``: the step schedule (``schedule="steps"``) except for ``old`` (the original model and
  epoch schedule); with ``--init ridge``, first fits the same ridge AR as the task's baseline on the
  training tensors and starts the AR path there (``init_linear_ar``), and counts the untrained
  weights as a candidate for the best (``initial_candidate=True``).

    PYTHONPATH=. python benchmarks/accuracy/forecast.py --data var1 --seeds 0 1 2
    PYTHONPATH=. python benchmarks/accuracy/forecast.py --data yeast --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import time

import anndata as ad
import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import RidgeCV

import anndata_rnn.tl._forecast as task
from anndata_rnn import datasets, tl
from anndata_rnn.training import dataset_loss

torch.set_num_threads(1)
ORIGINAL_BUILD, ORIGINAL_FIT = task.build_module, task.fit


def ridge_init(module, train):
    """The task's ridge AR (``fit_linear_ar``) on the training tensors -> the AR path."""
    x, lengths, y, observed = (t.numpy() for t in train)
    lags = module.ar_lags
    valid = np.arange(x.shape[1])[None, :] < (lengths[:, None] - 1)
    seq, t = np.nonzero(valid)
    design = np.concatenate([x[seq, np.maximum(t - j, 0)] for j in range(lags)], axis=1)
    change = y[seq, t] - x[seq, t, : module.n_outputs]
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 7)).fit(design, change)
    module.init_linear_ar(np.atleast_2d(ridge.coef_), np.atleast_1d(ridge.intercept_))


def install(variant: str, init: str) -> None:
    def build_module(name, n_inputs, config):
        arch = config["architecture"]
        if variant in ("new", "linear"):
            arch["linear_path"] = True
        if variant == "linear":
            arch["recurrent"] = False
        return ORIGINAL_BUILD(name, n_inputs, config)

    def fit(module, loss_fn, train, val, config, **kwargs):
        config.schedule = "epochs" if variant == "old" else "steps"
        if getattr(module, "ar", None) is not None and init == "ridge":
            # a fit that learned nothing stays at persistence, the zero-initialized start
            kwargs["reference_loss"] = dataset_loss(module, loss_fn, train)
            ridge_init(module, train)
            kwargs["initial_candidate"] = True
        history = ORIGINAL_FIT(module, loss_fn, train, val, config, **kwargs)
        RUN["history"] = {k: history[k] for k in ("steps_run", "best_step", "failed_fit")}
        return history

    task.build_module, task.fit = build_module, fit


RUN = {}


def var1(seed, n_series=20, n_genes=10, n_steps=30, noise=0.3):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n_genes, n_genes))
    a *= 0.8 / np.abs(np.linalg.eigvals(a)).max()
    x = np.zeros((n_series, n_steps, n_genes))
    x[:, 0] = rng.normal(size=(n_series, n_genes))
    for t in range(1, n_steps):
        x[:, t] = x[:, t - 1] @ a.T + noise * rng.normal(size=(n_series, n_genes))
    obs = pd.DataFrame(
        {
            "series": np.repeat([f"s{i}" for i in range(n_series)], n_steps),
            "time": np.tile(np.arange(n_steps, dtype=float), n_series),
        },
        index=[f"o{i}" for i in range(n_series * n_steps)],
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])
    return ad.AnnData(x.reshape(-1, n_genes).astype(np.float32), obs=obs, var=var)


def yeast():
    adata = datasets.spellman1998()
    adata = adata[adata.obs["series"] == "cdc15"].copy()
    complete = ~np.isnan(np.asarray(adata.X)).any(axis=0)
    return adata[:, complete].copy()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=["var1", "yeast"], default="var1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["old", "new", "linear"])
    parser.add_argument("--init", choices=["zero", "ridge"], default="ridge")
    args = parser.parse_args()
    for seed in args.seeds:
        for variant in args.variants:
            install(variant, args.init)
            if args.data == "var1":
                adata = var1(seed)
                kwargs = dict(layout="obs-series", series_key="series", time_key="time")
            else:
                adata = yeast()
                kwargs = dict(
                    layout="var-series",
                    series_key="series",
                    time_key="time",
                    holdout_steps=4,
                    test_fraction=0.3,
                    hidden=(32,),
                    max_epochs=30,
                    batch_size=128,
                )
            t0 = time.time()
            tl.forecast(adata, seed=seed, quiet=True, **kwargs)
            metrics = adata.uns["rnn"]["metrics"]
            print(
                json.dumps(
                    {
                        "dataset": args.data,
                        "seed": seed,
                        "model": variant,
                        "init": args.init,
                        "mse": float(metrics["rnn"]["mse"]),
                        "linear_ar": float(metrics["linear_ar"]["mse"]),
                        "persistence": float(metrics["persistence"]["mse"]),
                        "seconds": round(time.time() - t0, 1),
                        **RUN.get("history", {}),
                    },
                    default=float,
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()

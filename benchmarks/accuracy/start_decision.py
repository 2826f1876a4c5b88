"""Measures the rule that decides whether a classifier keeps its start (the logistic regression)
or its trained weights (issue 25, item 1): below how many validation units does the validation
loss decide worse than an internal K-fold on the training units?

Every run trains the model from the logistic-regression start, then computes *both* decisions
(validation loss: start vs best step; 5-fold cross-validation on the training units: start vs
the same number of steps) and keeps the trained weights, so its test metrics are the trained
model's and the baseline's are the start's. A large test split (200 units) scores which of the
two was right. Problems: a wide linear profile (40 training + 200 test samples × 3,000 genes, where the start
is hard to beat) and few long shapes (1 gene × 150 steps, where the recurrence wins).

    python benchmarks/accuracy/start_decision.py [--val 6 12 24 48] [--seeds 0 1 2]
        [--problems linear shapes] > benchmarks/accuracy/results/start_decision.jsonl
    python benchmarks/accuracy/start_decision.py --summary \
        benchmarks/accuracy/results/start_decision.jsonl

``results/start_decision_mean.jsonl`` is the first measurement, when a lower mean held-out loss
alone kept the trained weights (its rows hold [start, trained] mean losses);
``results/start_decision.jsonl`` is the rule the tool uses, a one-sided paired t-test at 5 %
(rows hold [start, trained, t, kept]). The summary gives, per validation size and rule, how often the rule kept the model with the
better test macro-F1 (a tie counts as right) and the mean test macro-F1 it lost against that
better model (the regret).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import anndata as ad
import numpy as np
import pandas as pd
import torch

os.environ.pop("ANNDATA_RNN_MIN_STEPS", None)  # the defaults a user gets
torch.set_num_threads(1)

import anndata_rnn as ar  # noqa: E402
from anndata_rnn import classification  # noqa: E402

N_TRAIN, N_TEST = 40, 200


def linear_profile(seed: int, n: int, genes: int = 3000, informative: int = 50, shift: float = 1.0):
    """Two classes of ``n`` profiles of standard normal genes; ``informative`` random genes are
    shifted by ±``shift`` / 2 (logistic regression on 28 training samples: accuracy ~0.84, on 40: ~0.87)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rng.shuffle(y)
    x = rng.normal(size=(n, genes))
    on = rng.choice(genes, informative, replace=False)
    x[:, on] += np.where(y[:, None] == 1, shift, -shift) / 2
    obs = pd.DataFrame(
        {"label": pd.Categorical(np.where(y == 1, "a", "b"))}, index=[f"c{i}" for i in range(n)]
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(genes)])
    return ad.AnnData(x.astype(np.float32), obs=obs, var=var)


def long_shapes(seed: int, n: int, steps: int = 150):
    """Plateaus at random places; one class adds a dip before the rise and an overshoot after
    the fall (tests/test_accuracy.py::_long_shapes). One gene, one series per unit."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    y = rng.integers(0, 2, n)
    x = np.zeros((n, steps))
    for i in range(n):
        c, w = rng.uniform(0.35, 0.65) * steps, rng.uniform(0.2, 0.35) * steps
        a, s = rng.uniform(0.8, 1.2), steps / 30
        up, down = c - w / 2, c + w / 2
        curve = a / (1 + np.exp(-(t - up) / s)) - a / (1 + np.exp(-(t - down) / s))
        if y[i] == 1:
            curve -= 0.25 * np.exp(-0.5 * ((t - up + 3 * s) / s) ** 2)
            curve += 0.25 * np.exp(-0.5 * ((t - down - 3 * s) / s) ** 2)
        x[i] = curve + rng.normal(0, 0.05, steps)
    obs = pd.DataFrame(
        {
            "series": np.repeat([f"s{i}" for i in range(n)], steps),
            "time": np.tile(t.astype(float), n),
            "label": pd.Categorical(np.repeat(np.where(y == 1, "gun", "point"), steps)),
        },
        index=[f"o{i}" for i in range(n * steps)],
    )
    return ad.AnnData(x.reshape(-1, 1).astype(np.float32), obs=obs)


def both_decisions(module, start_state, history, start_val, config, logistic, inner, what):
    """Replaces keep_or_start: records the validation and the K-fold decision, keeps trained."""
    trained_val = classification.item_losses(
        module, inner["unit_loss"], inner["val_set"], inner["device"]
    )
    cv = classification.inner_cv(config, history, inner, what)
    history["kept_val_loss"] = float(np.mean(trained_val))
    decisions = {}
    for rule, (before, after) in (
        ("val", (start_val, trained_val)),
        ("cv", (cv[0], cv[1]) if cv else (None, None)),
    ):
        if before is None:
            decisions[rule] = None
            continue
        keep, t = classification.beats_start(before, after)
        decisions[rule] = [float(np.mean(before)), float(np.mean(after)), t, keep]
    return {
        "start": "logistic regression",
        "kept": "trained",
        "decided_by": "measurement",
        "start_loss": float(np.mean(start_val)),
        "best_loss": float(np.mean(trained_val)),
        "improvement_t": decisions["val"][2],
        "trained_steps": int(history["best_step"]),
        "decisions": decisions,
    }


def summary(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    table: dict = {}
    for row in rows:
        for model in ("rnn", "linear_path"):
            entry = row[model]
            trained = entry["test_trained"]["f1_macro"]
            start = row["test_start"]["f1_macro"]
            best = max(trained, start)
            for rule, decision in (("validation", entry["val"]), ("5-fold", entry["cv"])):
                if decision is None:
                    continue
                # rows of the first measurement hold [start, trained] losses (lower mean wins)
                keep = decision[3] if len(decision) > 2 else decision[1] < decision[0]
                kept = trained if keep else start
                cell = table.setdefault((model, row["n_val"], rule), [])
                cell.append((kept == best, best - kept))
    print("| model | validation units | rule | runs | right | mean regret (macro-F1) |")
    print("|---|---|---|---|---|---|")
    for (model, n_val, rule), cell in sorted(table.items()):
        right = sum(r for r, _ in cell)
        regret = np.mean([g for _, g in cell])
        print(f"| {model} | {n_val} | {rule} | {len(cell)} | {right} | {regret:.3f} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--summary", help="summarize a JSON-lines file of earlier runs")
    parser.add_argument("--val", nargs="+", type=int, default=[6, 12, 24, 48])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--problems", nargs="+", default=["linear", "shapes"])
    args = parser.parse_args()
    if args.summary:
        summary(args.summary)
        return
    classification.keep_or_start = both_decisions
    for problem in args.problems:
        for n_val in args.val:
            for seed in args.seeds:
                n = N_TRAIN + n_val + N_TEST
                split = np.array(["train"] * N_TRAIN + ["val"] * n_val + ["test"] * N_TEST)
                if problem == "linear":
                    adata = linear_profile(seed, n)
                    adata.obs["split"] = split
                    options = {"layout": "profile"}
                else:
                    adata = long_shapes(seed, n)
                    adata.obs["split"] = np.repeat(split, adata.n_obs // n)
                    options = {"series_key": "series", "time_key": "time"}
                began = time.time()
                result = ar.tl.classify.run(
                    adata, label_key="label", split_key="split", seed=seed, quiet=True, **options
                )
                metrics, start = result.metrics, result.record["start"]
                row = {"problem": problem, "n_val": n_val, "seed": seed}
                for model in ("rnn", "linear_path"):
                    s = start[model]
                    row[model] = {
                        # [mean start loss, mean trained loss, paired t, trained kept]
                        "val": s["decisions"]["val"],
                        "cv": s["decisions"]["cv"],
                        "steps": s["trained_steps"],
                        "test_trained": {
                            m: metrics[model][m] for m in ("accuracy", "f1_macro", "auroc")
                        },
                    }
                row["test_start"] = {
                    m: metrics["baseline"][m] for m in ("accuracy", "f1_macro", "auroc")
                }
                row["seconds"] = round(time.time() - began, 1)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

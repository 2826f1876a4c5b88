"""The README's results table: model, linear path alone and baseline on public data.

Runs the real tools with default options (one torch thread, the default 600-step floor) on the
data bundled with the package and with scanpy; nothing is downloaded. Prints a markdown table
and writes it with the raw metrics as JSON.

    python benchmarks/accuracy/public_data.py [--only pbmc yeast krumsiek yeast_forecast]
        [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
import torch

os.environ.pop("ANNDATA_RNN_MIN_STEPS", None)  # the defaults a user gets
torch.set_num_threads(1)

import anndata_rnn as ar  # noqa: E402


def krumsiek():
    adata = sc.datasets.krumsiek11()
    adata.obs_names = [f"cell{i}" for i in range(adata.n_obs)]
    adata.obs["series"] = pd.Categorical(np.repeat(np.arange(4), 160).astype(str))
    adata.obs["time"] = np.tile(np.arange(160, dtype=float), 4)
    adata.uns.pop("highlights", None)
    return adata


def run(name, adata, tool, metric, command, **options):
    start = time.time()
    result = tool.run(adata, quiet=True, **options)
    metrics = result.metrics
    row = {
        "data": name,
        "metric": metric,
        **{model: metrics[model][metric] for model in metrics if metric in metrics[model]},
        "seconds": round(time.time() - start, 1),
        "command": command,
        "cautions": list(result.record.get("cautions", [])),
    }
    print(json.dumps(row), flush=True)
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="+")
    parser.add_argument("--out", default="accuracy_results")
    args = parser.parse_args()
    wanted = set(args.only or ["pbmc", "yeast", "krumsiek", "yeast_forecast"])
    rows = []
    if "pbmc" in wanted:
        for seed in (0, 1, 2):
            rows.append(
                run(
                    f"pbmc68k_reduced, profile, bulk_labels, seed {seed}",
                    sc.datasets.pbmc68k_reduced(),
                    ar.tl.classify,
                    "f1_macro",
                    "anndata-rnn classify pbmc.h5ad --layout profile --label bulk_labels "
                    f"--seed {seed} --threads 1",
                    label_key="bulk_labels",
                    layout="profile",
                    seed=seed,
                )
            )
    yeast = dict(layout="var-series", series_key="series", time_key="time")
    if "yeast" in wanted:
        rows.append(
            run(
                "yeast cdc15, var-series, cell_cycle_800 (the demo)",
                ar.datasets.spellman1998(),
                ar.tl.classify,
                "auroc",
                "anndata-rnn demo --threads 1",
                label_key="cell_cycle_800",
                series_subset=["cdc15"],
                max_epochs=30,
                patience=5,
                seed=0,
                **yeast,
            )
        )
    if "krumsiek" in wanted:
        rows.append(
            run(
                "krumsiek11, obs-series, cell_type per step (4 series: 1 tested)",
                krumsiek(),
                ar.tl.classify,
                "balanced_accuracy",
                "anndata-rnn classify krumsiek.h5ad --series-key series --time-key time "
                "--label cell_type --threads 1",
                label_key="cell_type",
                series_key="series",
                time_key="time",
                seed=0,
            )
        )
    if "yeast_forecast" in wanted:
        rows.append(
            run(
                "yeast cdc15, var-series forecast, last 4 of 24 points (MSE)",
                ar.datasets.spellman1998(),
                ar.tl.forecast,
                "mse",
                "anndata-rnn forecast spellman.h5ad --layout var-series --series-key series "
                "--time-key time --series-subset cdc15 --holdout-steps 4 --threads 1",
                series_subset=["cdc15"],
                holdout_steps=4,
                seed=0,
                **yeast,
            )
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "public_data.json").write_text(json.dumps(rows, indent=1))
    models = ["rnn", "linear_path", "baseline", "nearest_neighbour", "linear_ar", "persistence"]
    lines = ["| data | metric | " + " | ".join(models) + " |", "|---" * (len(models) + 2) + "|"]
    for row in rows:
        cells = [f"{row[m]:.3g}" if m in row else "" for m in models]
        lines.append(f"| {row['data']} | {row['metric']} | " + " | ".join(cells) + " |")
    (out / "public_data.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Which long-sequence options win on public archive problems (the measurement behind the shape
defaults of ``classify``; README "Long univariate or few-channel series").

Runs ``ar.tl.classify`` (Python API, one torch thread, the archive's train/test split as in
``timeseries_archive.py``) with one option changed at a time against the defaults of the code
it runs, and prints / appends one JSON line per run to ``--out``
(``benchmarks/accuracy/results/timeseries_options.jsonl``). Needs the archive problems (see
``timeseries_archive.py``: sktime installed, or ``--data-dir``).

    python benchmarks/accuracy/timeseries_options.py --variants plain conv zseq ensemble
        [--problems GunPoint ArrowHead BasicMotions] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

os.environ.pop("ANNDATA_RNN_MIN_STEPS", None)  # the defaults a user gets
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from timeseries_archive import archive_dir, problem_adata  # noqa: E402

import anndata_rnn as ar  # noqa: E402
import anndata_rnn.classification as classify_module  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "timeseries_options.jsonl"

#: option changes against the defaults (keyword arguments of ``tl.classify``); ``ceiling1``
#: restores the original step schedule (the budget is the maximum); ``ensemble`` averages the
#: probabilities of 5 runs with seeds seed, seed + 100, ... (InceptionTime's 5 networks)
VARIANTS = {
    "defaults": {},
    "plain": {"scale": "feature", "conv": "none"},
    "zseq_only": {"scale": "sequence", "conv": "none"},
    "conv_only": {"scale": "feature", "conv": "64,64,64"},
    "feature_scale": {"scale": "feature"},
    "no_conv": {"conv": "none"},
    "ceiling1": {},
    "ensemble": {},
}


def one_run(adata, seed, variant):
    """``(metrics, history, proba of every row)`` of one classify run."""
    ceiling = classify_module.STEP_CEILING
    if variant == "ceiling1":
        classify_module.STEP_CEILING = 1
    try:
        result = ar.tl.classify.run(
            adata.copy(),
            label_key="label",
            series_key="series",
            time_key="time",
            split_key="split",
            seed=seed,
            quiet=True,
            **VARIANTS[variant],
        )
    finally:
        classify_module.STEP_CEILING = ceiling
    return result.metrics, result.record["history"], result.adata.obsm["rnn_proba"]


def metrics_classes(adata):
    """The class order of ``rnn_proba`` (the label's categories, as the task reads them)."""
    return list(adata.obs["label"].cat.categories)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", nargs="+", default=["defaults"])
    parser.add_argument("--problems", nargs="+", default=["GunPoint", "ArrowHead", "BasicMotions"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    folder = archive_dir(args.data_dir)
    for name in args.problems:
        for seed in args.seeds:
            adata = problem_adata(folder, name, 0.15, seed)
            for variant in args.variants:
                start = time.time()
                metrics, history, proba = one_run(adata, seed, variant)
                row = {
                    "problem": name,
                    "seed": seed,
                    "variant": variant,
                    "options": VARIANTS[variant],
                    **{m: round(float(v["accuracy"]), 4) for m, v in metrics.items()},
                    "steps_run": int(history["steps_run"]),
                    "best_step": int(history["best_step"]),
                    "max_steps": int(history.get("max_steps", -1)),
                }
                if variant == "ensemble":  # 4 more members, probabilities averaged per series
                    members = [proba] + [
                        one_run(adata, seed + 100 * k, "defaults")[2] for k in range(1, 5)
                    ]
                    test = (adata.obs["split"] == "test").to_numpy()
                    first = ~adata.obs["series"].duplicated().to_numpy() & test
                    mean = np.mean(members, axis=0)[first]
                    truth = adata.obs["label"].to_numpy()[first]
                    classes = np.asarray(metrics_classes(adata))
                    row["rnn_first_member"] = row["rnn"]
                    row["rnn"] = round(float((classes[mean.argmax(1)] == truth).mean()), 4)
                row["seconds"] = round(time.time() - start, 1)
                print(json.dumps(row), flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

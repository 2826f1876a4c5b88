"""Time, peak memory and accuracy of a default ``tl.forecast`` on many genes (issue 25, item 3).

Not a test: run by hand, one size per call; the forecast runs in a child process whose peak RSS
is read with ``resource.getrusage(RUSAGE_CHILDREN)``::

    PYTHONPATH=. python benchmarks/forecast_scale.py --genes 4000 --threads 1

The data (obs-series layout): ``series`` series × ``steps`` time points × ``genes`` genes on a
log scale, irregular sampling (gaps uniform in 0.5-1.5). Every gene is a per-gene mean, plus
its loadings on 6 shared latent oscillations (periods 4-12, each series with its own phases and
amplitudes), plus its own AR(1) deviation (coefficient uniform in 0.3-0.9), plus measurement
noise. So there is something to learn across genes (the shared oscillations) and within each
gene (its own AR), and persistence is not optimal.

The forecast is ``tl.forecast(adata, series_key="series", time_key="time", seed=SEED)``, every
other option at its default (one-step-ahead MSE on the test series; ``--holdout-steps K`` scores
the rollout of the last K steps instead). The JSON in ``--out`` (default
``benchmarks/results/forecast_scale_<genes>.json``) holds the wall time of the call, the peak RSS
of the child process (the data included), the MSE of every model, each model's MSE over the
best baseline's (persistence or the linear AR), the AR form used and the parameter counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("persistence", "linear_ar")


def simulate(n_series: int, n_steps: int, n_genes: int, seed: int = 0):
    """The synthetic time course described in the module docstring (an AnnData)."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_factors = 6
    gaps = rng.uniform(0.5, 1.5, size=(n_series, n_steps - 1))
    times = np.concatenate([np.zeros((n_series, 1)), gaps.cumsum(1)], axis=1)
    periods = rng.uniform(4, 12, n_factors)
    phases = rng.uniform(0, 2 * np.pi, (n_series, n_factors))
    amplitude = rng.uniform(0.5, 1.5, (n_series, n_factors))
    factors = amplitude[:, None, :] * np.sin(
        2 * np.pi * times[..., None] / periods + phases[:, None, :]
    )  # series × steps × factors
    loadings = rng.normal(0, 1, (n_factors, n_genes)) * (rng.random((n_factors, n_genes)) < 0.3)
    mean = rng.uniform(1, 6, n_genes)
    phi = rng.uniform(0.3, 0.9, n_genes)
    own = np.zeros((n_series, n_steps, n_genes))
    own[:, 0] = rng.normal(0, 0.5, (n_series, n_genes))
    for t in range(1, n_steps):
        own[:, t] = phi * own[:, t - 1] + rng.normal(0, 0.5 * np.sqrt(1 - phi**2), n_genes)
    x = mean + factors @ loadings + own + rng.normal(0, 0.2, own.shape)
    obs = pd.DataFrame(
        {
            "series": np.repeat([f"s{i:02d}" for i in range(n_series)], n_steps),
            "time": np.round(times, 3).ravel(),
        },
        index=[f"o{i}" for i in range(n_series * n_steps)],
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])
    return ad.AnnData(x.reshape(-1, n_genes).astype(np.float32), obs=obs, var=var)


def child(args) -> dict:
    """Run the forecast in this process and return what was measured."""
    import torch

    torch.set_num_threads(args.threads)
    from anndata_rnn import tl

    adata = simulate(args.series, args.steps, args.genes, args.seed)
    extra = {} if args.ar_form == "auto" else {"ar_form": args.ar_form}
    start = time.perf_counter()
    model = tl.forecast(
        adata,
        series_key="series",
        time_key="time",
        holdout_steps=args.holdout_steps,
        seed=args.seed,
        quiet=True,
        **extra,
    )
    wall = time.perf_counter() - start
    record = adata.uns["rnn"]
    metrics = {m: float(v["mse"]) for m, v in record["metrics"].items()}
    best = min(BASELINES, key=lambda m: metrics[m])
    history = record["history"]
    return {
        "wall_s": round(wall, 2),
        "mse": metrics,
        "best_baseline": best,
        "ratio_to_best_baseline": {m: v / metrics[best] for m, v in metrics.items()},
        "ar_form": str(record["params"].get("ar_form_used")),
        "ar_parameters": int(record["params"].get("ar_parameters", -1)),
        "network_parameters": int(sum(p.numel() for p in model.module.parameters())),
        "evaluation": {k: str(v) for k, v in record["evaluation"].items()},
        "steps_run": int(history.get("steps_run", -1)),
        "best_step": int(history.get("best_step", -1)),
        "failed_fit": bool(history.get("failed_fit", False)),
        "cautions": [str(c) for c in record.get("cautions", [])],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=4000)
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--holdout-steps", type=int, default=0)
    parser.add_argument("--ar-form", default="auto", choices=["auto", "dense", "per_gene"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--child"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, *argv, "--child"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    total = time.perf_counter() - start
    if done.returncode:
        print(done.stderr[-4000:], file=sys.stderr)
        return 1
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    result = {
        "command": "python benchmarks/forecast_scale.py " + " ".join(argv),
        "data": {
            "layout": "obs-series",
            "series": args.series,
            "steps": args.steps,
            "genes": args.genes,
            "seed": args.seed,
        },
        "threads": args.threads,
        "holdout_steps": args.holdout_steps,
        **measured,
        "peak_rss_mib": round(peak / 2**20, 1),
        "process_wall_s": round(total, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared: timings are rough)",
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"forecast_scale_{args.genes}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

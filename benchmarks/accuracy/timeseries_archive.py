"""Public time-series classification problems (UCR/UEA archive, fixed train/test splits)
through the command line with default options, ``obs-series`` layout.

The problems are read from the ``.ts`` files that the ``sktime`` wheel ships
(``sktime/datasets/data/<Problem>/<Problem>_TRAIN.ts`` / ``_TEST.ts``); nothing is downloaded.
Either install sktime (``pip install sktime``; only its data folder is read) or point
``--data-dir`` at a folder holding those problem folders (e.g. unzipped from the wheel:
``pip download --no-deps sktime && unzip sktime-*.whl 'sktime/datasets/data/*'``).

Each problem becomes an AnnData with one observation per time point (``obs``: ``series``,
``time``, ``label``, ``split``; X: the channels). The archive's training series are split into
train and validation (a seeded stratified ``--val-fraction``, for early stopping; the archive's
test series are never seen before scoring), written to ``split``, and the tool is run as

    anndata-rnn classify PROBLEM.h5ad --series-key series --time-key time --label label
        --split-key split --seed SEED --threads 1

Accuracy of the model, the linear path alone, logistic regression and 1-nearest-neighbour is
read from the metrics table the command writes. Prints one JSON line per run and appends them
to ``--out`` (default ``benchmarks/accuracy/results/timeseries_archive.jsonl``).

    python benchmarks/accuracy/timeseries_archive.py [--problems GunPoint ArrowHead ...]
        [--seeds 0 1 2] [--data-dir DIR] [--out FILE] [-- extra classify options]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results" / "timeseries_archive.jsonl"
DEFAULT_PROBLEMS = ("GunPoint", "ArrowHead", "ItalyPowerDemand", "BasicMotions")


def archive_dir(data_dir: str | None) -> Path:
    if data_dir:
        return Path(data_dir)
    try:
        import sktime
    except ImportError:
        sys.exit("install sktime (its wheel ships the archive problems) or give --data-dir")
    return Path(sktime.__file__).parent / "datasets" / "data"


def read_ts(path: Path) -> tuple[list[np.ndarray], list[str]]:
    """A ``.ts`` file: per series a ``(steps, channels)`` array, and the class labels."""
    series, labels, data = [], [], False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not data:
            data = line.lower() == "@data"
            continue
        *dims, label = line.split(":")
        channels = [np.array([float(v) for v in d.split(",")]) for d in dims]
        steps = min(len(c) for c in channels)
        series.append(np.stack([c[:steps] for c in channels], axis=1))
        labels.append(label.strip())
    return series, labels


def problem_adata(folder: Path, name: str, val_fraction: float, seed: int) -> ad.AnnData:
    """One observation per time point; the archive split, a validation part of its training."""
    train, train_y = read_ts(folder / name / f"{name}_TRAIN.ts")
    test, test_y = read_ts(folder / name / f"{name}_TEST.ts")
    rng = np.random.default_rng(seed)
    split = np.array(["train"] * len(train) + ["test"] * len(test), dtype=object)
    train_y_arr = np.asarray(train_y)
    for c in np.unique(train_y_arr):  # stratified validation part of the archive's training
        members = rng.permutation(np.flatnonzero(train_y_arr == c))
        split[members[: int(round(val_fraction * len(members)))]] = "val"
    rows, obs = [], []
    for i, (x, y) in enumerate(zip(train + test, train_y + test_y, strict=True)):
        rows.append(x)
        obs.append(
            pd.DataFrame(
                {
                    "series": f"s{i}",
                    "time": np.arange(len(x), dtype=float),
                    "label": y,
                    "split": split[i],
                }
            )
        )
    frame = pd.concat(obs, ignore_index=True)
    frame.index = [f"r{i}" for i in range(len(frame))]
    for column in ("series", "label", "split"):
        frame[column] = frame[column].astype("category")
    values = np.concatenate(rows).astype(np.float32)
    var = pd.DataFrame(index=[f"channel{j}" for j in range(values.shape[1])])
    out = ad.AnnData(values, obs=frame, var=var)
    out.uns["archive"] = {
        "problem": name,
        "n_train": len(train),
        "n_test": len(test),
        "steps": int(max(len(x) for x in train + test)),
        "channels": int(values.shape[1]),
        "classes": len(set(train_y)),
    }
    return out


def run_problem(folder: Path, name: str, seed: int, val_fraction: float, extra: list[str]):
    adata = problem_adata(folder, name, val_fraction, seed)
    with tempfile.TemporaryDirectory() as tmp:
        data, table = Path(tmp) / f"{name}.h5ad", Path(tmp) / "metrics.tsv"
        adata.write_h5ad(data)
        command = [
            "anndata-rnn",
            "classify",
            str(data),
            "--series-key",
            "series",
            "--time-key",
            "time",
            "--label",
            "label",
            "--split-key",
            "split",
            "--seed",
            str(seed),
            "--threads",
            "1",
            "--quiet",
            "--output",
            str(Path(tmp) / "out.h5ad"),
            "--model-out",
            str(Path(tmp) / "model.h5"),
            "--metrics-table",
            str(table),
            *extra,
        ]
        env = {k: v for k, v in os.environ.items() if k != "ANNDATA_RNN_MIN_STEPS"}
        start = time.time()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = round(time.time() - start, 1)
        if done.returncode:
            sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        metrics = pd.read_csv(table, sep="\t").set_index("metric")
        out = ad.read_h5ad(Path(tmp) / "out.h5ad", backed="r")
        record = out.uns["rnn"]
        history = record.get("history", {})
        row = {
            "problem": name,
            **adata.uns["archive"],
            "seed": seed,
            **{m: round(float(metrics.loc["accuracy", m]), 4) for m in metrics.columns},
            "steps_run": int(history.get("steps_run", -1)),
            "best_step": int(history.get("best_step", -1)),
            "params": {
                k: (v.item() if hasattr(v, "item") else v)
                for k, v in record["params"].items()
                if np.ndim(v) == 0 and not isinstance(v, dict)
            },
            "shape": {
                k: np.asarray(v).tolist() for k, v in record["params"].get("shape", {}).items()
            },
            "seconds": seconds,
            "extra_options": extra,
            "command": "anndata-rnn classify "
            f"{name}.h5ad --series-key series --time-key time --label label --split-key split "
            f"--seed {seed} --threads 1" + (" " + " ".join(extra) if extra else ""),
        }
        out.file.close()
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=list(DEFAULT_PROBLEMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: classify options")
    args = parser.parse_args()
    extra = [e for e in args.extra if e != "--"]
    folder = archive_dir(args.data_dir)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for name in args.problems:
        for seed in args.seeds:
            row = run_problem(folder, name, seed, args.val_fraction, extra)
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

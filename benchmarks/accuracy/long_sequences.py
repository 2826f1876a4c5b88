"""Few long sequences: a simulated two-class shape problem (GunPoint-like) and a three-class one.

40 training + 10 validation sequences of 150 steps (default), 150 test sequences. Each sequence
is a smooth plateau at a random position and width; class "gun" adds a small dip before the
rise and an overshoot after the fall (the shape difference 1-NN finds). ``--classes 3`` adds a
third class whose plateau has a notch, with 251 steps. One feature per step, standardized with
training statistics (as the var-series layout does), no time channel.

    PYTHONPATH=. python benchmarks/accuracy/long_sequences.py --seeds 0 1 2 --variants old new
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, one_nn, summary, train_classifier  # noqa: E402

from anndata_rnn.sequences import Labels  # noqa: E402

NEW = {"linear_path": True}
VARIANTS = {
    "old": ({}, {"schedule": "epochs"}),
    "old_steps": ({}, {}),
    "new": (NEW, {}),
    "linear": ({"linear_path": True, "recurrent": False}, {}),
    "new_warm": (NEW, {}),
    "new_mean": ({**NEW, "pooling": "mean"}, {}),
    "new_attention": ({**NEW, "pooling": "attention"}, {}),
    "new_conv": ({**NEW, "conv": [64, 64, 64]}, {}),
    "new_conv_mean": ({**NEW, "conv": [64, 64, 64], "pooling": "mean"}, {}),
    "new_down5": ({**NEW, "downsample": 5}, {}),
    "new_down5_mean": ({**NEW, "downsample": 5, "pooling": "mean"}, {}),
}


def simulate(n, steps, n_classes, rng):
    t = np.arange(steps)
    y = rng.integers(0, n_classes, n)
    x = np.zeros((n, steps))
    for i in range(n):
        c = rng.uniform(0.35, 0.65) * steps
        w = rng.uniform(0.2, 0.35) * steps
        a = rng.uniform(0.8, 1.2)
        s = steps / 30
        up, down = c - w / 2, c + w / 2
        curve = a / (1 + np.exp(-(t - up) / s)) - a / (1 + np.exp(-(t - down) / s))
        if y[i] == 1:  # "gun": dip before the rise, overshoot after the fall
            curve -= 0.25 * np.exp(-0.5 * ((t - up + 3 * s) / s) ** 2)
            curve += 0.25 * np.exp(-0.5 * ((t - down - 3 * s) / s) ** 2)
        if y[i] == 2:  # a notch in the plateau
            curve -= 0.3 * np.exp(-0.5 * ((t - c) / s) ** 2)
        x[i] = curve + rng.normal(0, 0.05, steps)
    return x, y


def make_data(seed, n_train=40, n_val=10, n_test=150, steps=150, n_classes=2):
    rng = np.random.default_rng(1000 + seed)
    n = n_train + n_val + n_test
    x, y = simulate(n, steps, n_classes, rng)
    train = np.arange(n_train)
    mean, std = x[train].mean(), x[train].std()
    values = torch.from_numpy(((x - mean) / std)[..., None].astype(np.float32))
    classes = np.asarray([f"c{k}" for k in range(n_classes)], dtype=object)
    return {
        "index": None,
        "labels": Labels(key="shape", level="unit", classes=classes, codes=y),
        "ids": {
            "train": train,
            "val": np.arange(n_train, n_train + n_val),
            "test": np.arange(n_train + n_val, n),
        },
        "values": values,
        "lengths": torch.full((n,), steps, dtype=torch.int64),
        "y": torch.from_numpy(y.astype(np.int64)),
        "seed": seed,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["old", "new", "linear"])
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    steps = args.steps or (150 if args.classes == 2 else 251)
    for seed in args.seeds:
        data = make_data(seed, steps=steps, n_classes=args.classes)
        acc, f1 = one_nn(data)
        name = f"sim{args.classes}x{steps}"
        emit({"dataset": name, "seed": seed, "model": "1nn", "accuracy": acc, "f1_macro": f1})
        from common import baseline_flat

        acc, f1 = baseline_flat(data)
        emit({"dataset": name, "seed": seed, "model": "logreg", "accuracy": acc, "f1_macro": f1})
        for variant in args.variants:
            arch, train = VARIANTS[variant]
            warm = variant.endswith("_warm")
            metrics, history, seconds = train_classifier(
                data, arch_extra=arch, train=train, warm=warm
            )
            emit(
                {
                    "dataset": name,
                    "seed": seed,
                    "model": variant,
                    "accuracy": metrics["accuracy"],
                    "f1_macro": metrics["f1_macro"],
                    "seconds": round(seconds, 1),
                    **summary(history),
                }
            )


if __name__ == "__main__":
    main()

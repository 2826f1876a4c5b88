"""Yeast cdc15 (Spellman 1998, bundled), var-series, label cell_cycle_800: AUROC of the model
variants and the logistic baseline on the same split (issue 12: must stay >= 0.92).

    PYTHONPATH=. python benchmarks/accuracy/yeast_classify.py --seeds 0 --variants old new linear

``--epochs 30 --patience 5`` (the default here) are the settings of the existing accuracy test
(tests/test_foundation.py); ``--epochs 100 --patience 10`` are the task's defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import baseline, emit, prepare_classification, summary, train_classifier  # noqa: E402

from anndata_rnn import datasets  # noqa: E402

VARIANTS = {
    "old": ({}, {"schedule": "epochs"}),
    "old_steps": ({}, {}),
    "new": ({"linear_path": True}, {}),
    "linear": ({"linear_path": True, "recurrent": False}, {}),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=["old", "new", "linear"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=5)
    args = parser.parse_args()
    adata = datasets.spellman1998()
    for seed in args.seeds:
        data = prepare_classification(
            adata,
            label_key="cell_cycle_800",
            layout="var-series",
            series_key="series",
            time_key="time",
            series_subset=["cdc15"],
            seed=seed,
        )
        emit(
            {
                "dataset": "yeast_cdc15",
                "seed": seed,
                "model": "logreg",
                "auroc": baseline(data)["auroc"],
            }
        )
        for name in args.variants:
            arch, train = VARIANTS[name]
            train = {"max_epochs": args.epochs, "patience": args.patience, **train}
            metrics, history, seconds = train_classifier(data, arch_extra=arch, train=train)
            emit(
                {
                    "dataset": "yeast_cdc15",
                    "seed": seed,
                    "model": name,
                    "auroc": metrics["auroc"],
                    "f1_macro": metrics["f1_macro"],
                    "seconds": round(seconds, 1),
                    **summary(history),
                }
            )


if __name__ == "__main__":
    main()

"""pbmc68k_reduced (scanpy's bundled copy), profile layout, label bulk_labels: macro-F1 of the
model variants and logistic regression on the same split (issue 12).

    PYTHONPATH=. python benchmarks/accuracy/pbmc.py --seeds 0 1 2 --variants old new linear
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import scanpy as sc

sys.path.insert(0, str(Path(__file__).parent))
from common import baseline, emit, prepare_classification, summary, train_classifier  # noqa: E402

VARIANTS = {
    # name: (architecture keys, TrainConfig keys, warm start of the linear path from the LR)
    "old": ({}, {"schedule": "epochs"}, False),  # the model before issue 12
    "old_steps": ({}, {}, False),
    "new": ({"linear_path": True}, {}, False),
    "linear": ({"linear_path": True, "recurrent": False}, {}, False),
    "new_warm": ({"linear_path": True}, {}, True),
    "linear_warm": ({"linear_path": True, "recurrent": False}, {}, True),
    "new_lr10": ({"linear_path": True, "linear_lr": 10}, {}, False),
    "linear_lr10": ({"linear_path": True, "recurrent": False, "linear_lr": 10}, {}, False),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["old", "new", "linear"])
    parser.add_argument("--order", default=None, help="gene order: none or 'cluster'")
    args = parser.parse_args()
    adata = sc.datasets.pbmc68k_reduced()
    for seed in args.seeds:
        order = None
        if args.order == "cluster":
            from gene_order import cluster_order

            order = cluster_order
        data = prepare_classification(
            adata, label_key="bulk_labels", layout="profile", seed=seed, gene_order=order
        )
        emit(
            {
                "dataset": "pbmc68k_reduced",
                "seed": seed,
                "model": "logreg",
                "f1_macro": baseline(data)["f1_macro"],
                "order": args.order,
            }
        )
        for name in args.variants:
            arch, train, warm = VARIANTS[name]
            metrics, history, seconds = train_classifier(
                data, arch_extra=arch, train=train, warm=warm
            )
            emit(
                {
                    "dataset": "pbmc68k_reduced",
                    "seed": seed,
                    "model": name,
                    "f1_macro": metrics["f1_macro"],
                    "accuracy": metrics["accuracy"],
                    "seconds": round(seconds, 1),
                    "order": args.order,
                    **summary(history),
                }
            )


if __name__ == "__main__":
    main()

"""Does the batch order of training from a file cost accuracy? (issue 13)

Not a test: run by hand (about 10 minutes on 2 cores)::

    python benchmarks/batch_order.py

pbmc68k_reduced (in the scanpy wheel) is written sorted by ``bulk_labels``, the worst case for
contiguous blocks, and classified with default options (profile layout, streamed) twice per
seed: with X in memory (a full shuffle of the training cells per pass) and from the file
(blocks of 64 cells read into a shuffle buffer of 256, half of the 490 training cells, far fewer
regions per buffer than the 32 of a large file). Prints the test macro-F1 of both and of the
logistic-regression baseline.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc

import anndata_rnn.streaming as streaming
from anndata_rnn import tl


def main() -> None:
    adata = sc.datasets.pbmc68k_reduced()
    adata = adata.raw.to_adata()
    order = np.argsort(adata.obs["bulk_labels"].cat.codes.to_numpy(), kind="stable")
    path = Path(tempfile.mkdtemp()) / "pbmc_sorted.h5ad"
    adata[order].copy().write_h5ad(path)
    streaming.STREAM_BLOCK = 16  # rounded up to one batch of 64
    kw = dict(label_key="bulk_labels", layout="profile", quiet=True, stream=True, chunk_rows=256)
    print("seed\tfull_shuffle_f1\tblocks_f1\tbatch_order\tbaseline_f1")
    for seed in (0, 1, 2):
        in_memory = ad.read_h5ad(path)
        tl.classify(in_memory, seed=seed, **kw)
        with streaming.open_lazy(path) as from_file:
            tl.classify(from_file, seed=seed, **kw)
            blocks = from_file.uns["rnn"]
        full = in_memory.uns["rnn"]
        print(
            seed,
            f"{full['metrics']['rnn']['f1_macro']:.3f}",
            f"{blocks['metrics']['rnn']['f1_macro']:.3f}",
            blocks["params"]["batch_order"],
            f"{full['metrics']['baseline']['f1_macro']:.3f}",
            sep="\t",
            flush=True,
        )
    path.unlink()


if __name__ == "__main__":
    sys.exit(main())

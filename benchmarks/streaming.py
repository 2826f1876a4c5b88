"""Memory and time of ``anndata-rnn predict`` (or ``classify``, ``--classify``, or ``embed``,
``--embed``; or the cost of reading cells from the file, ``--reads``) on large synthetic profile
data (issue 13).

Not a test: run by hand, one size per call (each prediction runs in a child process whose peak
RSS is read with ``resource.getrusage(RUSAGE_CHILDREN)``)::

    PYTHONPATH=. python benchmarks/streaming.py --cells 100000 --workdir /tmp/stream-bench

The input (``cells`` × 2,000 genes, ~16 % non-zero counts, CSR) is written chunk by chunk with
h5py, never built in memory. The model (profile, LSTM 128,64, chunks of 32 genes) is trained
once on 2,000 cells of the same generator and reused for every size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import write_elem

N_GENES = 2000
DENSITY = 0.16
ROWS_PER_WRITE = 10_000


def cell_block(rng: np.random.Generator, n: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """``n`` cells of counts: two cell types that differ in the first 100 genes."""
    kind = rng.integers(0, 2, n)
    present = rng.random((n, N_GENES), dtype=np.float32) < DENSITY
    rows, cols = np.nonzero(present)
    rate = 2.0 + 3.0 * (kind[rows] == 1) * (cols < 100)
    data = (rng.poisson(rate) + 1).astype(np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(n, N_GENES)), kind


def write_synthetic(path: Path, n_cells: int, seed: int = 0) -> None:
    """An .h5ad written row block by row block (memory of one block)."""
    rng = np.random.default_rng(seed)
    kinds = []
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        x = f.create_group("X")
        x.attrs["encoding-type"] = "csr_matrix"
        x.attrs["encoding-version"] = "0.1.0"
        x.attrs["shape"] = (n_cells, N_GENES)
        data = x.create_dataset("data", (0,), np.float32, maxshape=(None,), chunks=(1 << 20,))
        indices = x.create_dataset("indices", (0,), np.int32, maxshape=(None,), chunks=(1 << 20,))
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        for start in range(0, n_cells, ROWS_PER_WRITE):
            block, kind = cell_block(rng, min(ROWS_PER_WRITE, n_cells - start))
            kinds.append(kind)
            nnz, end = len(data), len(data) + block.nnz
            data.resize((end,))
            indices.resize((end,))
            data[nnz:end] = block.data
            indices[nnz:end] = block.indices
            indptr[start + 1 : start + 1 + block.shape[0]] = nnz + block.indptr[1:]
        x.create_dataset("indptr", data=indptr)
        obs = pd.DataFrame(
            {"kind": pd.Categorical(np.array(["a", "b"])[np.concatenate(kinds)])},
            index=[f"cell{i}" for i in range(n_cells)],
        )
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=[f"gene{i}" for i in range(N_GENES)]))
        for name in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, name, {})


def train_model(path: Path) -> None:
    from anndata_rnn import tl

    block, kind = cell_block(np.random.default_rng(1), 2000)
    adata = ad.AnnData(block)
    adata.obs_names = [f"t{i}" for i in range(adata.n_obs)]
    adata.var_names = [f"gene{i}" for i in range(N_GENES)]
    adata.obs["kind"] = pd.Categorical(np.array(["a", "b"])[kind])
    model = tl.classify(
        adata, label_key="kind", layout="profile", chunk_size=32, hidden=(128, 64),
        max_epochs=1, quiet=True,
    )  # fmt: skip
    model.save(path)


def time_reads(path: Path, draws: int = 20) -> dict:
    """Mean seconds to read 256 scattered rows, 256 and 8,192 consecutive rows of X."""
    from anndata.io import sparse_dataset

    rng = np.random.default_rng(0)
    with h5py.File(path, "r") as f:
        x = sparse_dataset(f["X"])
        n = x.shape[0]

        def mean_seconds(pick) -> float:
            started = time.perf_counter()
            for _ in range(draws):
                x[pick()]
            return round((time.perf_counter() - started) / draws, 4)

        return {
            "scattered_256_s": mean_seconds(lambda: np.sort(rng.choice(n, 256, replace=False))),
            "consecutive_256_s": mean_seconds(
                lambda: slice(s := int(rng.integers(0, n - 256)), s + 256)
            ),
            "consecutive_8192_s": mean_seconds(
                lambda: slice(s := int(rng.integers(0, n - 8192)), s + 8192)
            ),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/anndata-rnn-stream-bench"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk-rows", type=int, default=None)
    parser.add_argument("--keep-input", action="store_true")
    parser.add_argument(
        "--classify",
        action="store_true",
        help="measure training instead: anndata-rnn classify on the file (profile, 1 epoch, "
        "a small LSTM: memory is the data path's, not the network's)",
    )
    parser.add_argument(
        "--embed",
        action="store_true",
        help="measure anndata-rnn embed instead (profile, 1 epoch, latent 8, k-means with 2 "
        "clusters against the cell kind)",
    )
    parser.add_argument(
        "--reads",
        action="store_true",
        help="time reading cells from the file instead: 256 scattered rows vs 256 and 8,192 "
        "consecutive rows (anndata's sparse_dataset, 20 draws each); why training reads blocks",
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.workdir / "profile_model.h5"
    if not model.exists() and not args.reads:
        train_model(model)
    source = args.workdir / f"cells_{args.cells}.h5ad"
    if not source.exists():
        started = time.perf_counter()
        write_synthetic(source, args.cells)
        print(f"wrote {source} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.reads:
        print(json.dumps({"cells": args.cells, **time_reads(source)}))
        if not args.keep_input:
            source.unlink()
        return
    output = args.workdir / f"predicted_{args.cells}.h5ad"
    command = [
        sys.executable, "-m", "anndata_rnn", "predict", str(source), "--model", str(model),
        "--output", str(output), "--threads", str(args.threads), "--quiet", "--overwrite",
    ]  # fmt: skip
    if args.classify:
        output = args.workdir / f"classified_{args.cells}.h5ad"
        command = [
            sys.executable, "-m", "anndata_rnn", "classify", str(source), "--label", "kind",
            "--layout", "profile", "--chunk-size", "32", "--hidden", "32", "--epochs", "1",
            "--batch-size", "256", "--min-steps", "0", "--output", str(output),
            "--model-out", str(args.workdir / "classified_model.h5"),
            "--threads", str(args.threads), "--quiet", "--overwrite",
        ]  # fmt: skip
    if args.embed:
        output = args.workdir / f"embedded_{args.cells}.h5ad"
        command = [
            sys.executable, "-m", "anndata_rnn", "embed", str(source), "--layout", "profile",
            "--chunk-size", "32", "--hidden", "32", "--n-latent", "8", "--epochs", "1",
            "--batch-size", "256", "--cluster", "kmeans", "--n-clusters", "2",
            "--eval-label", "kind", "--output", str(output),
            "--model-out", str(args.workdir / "embedded_model.h5"),
            "--threads", str(args.threads), "--quiet", "--overwrite",
        ]  # fmt: skip
    if args.chunk_rows and not (args.classify or args.embed):
        command += ["--chunk-rows", str(args.chunk_rows)]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    wall = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = {
        "command_name": "embed" if args.embed else "classify" if args.classify else "predict",
        "cells": args.cells,
        "genes": N_GENES,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_kib / 1024),
        "threads": args.threads,
        "input_mb": round(source.stat().st_size / 2**20),
        "command": " ".join(command),
    }
    print(json.dumps(result))
    output.unlink()
    if not args.keep_input:
        source.unlink()


if __name__ == "__main__":
    main()

"""Several processes with torch.distributed (``torchrun``): who is who, sharding, agreement.

Started by ``torchrun --nproc_per_node=N [--nnodes ...] -m anndata_rnn COMMAND ...``, every
process (rank) runs the same command: it reads the input, builds the same split and fits the
same preprocessing (all seeded), trains the same network on its own shard of the training
sequences with DistributedDataParallel (gradients averaged across ranks), and evaluates the
validation loss on every rank, so early stopping agrees. Batched inference runs each rank on its
share of the batches and gathers them. Rank 0 alone writes the outputs and the model file.

gloo on the CPU, nccl on CUDA. Without ``WORLD_SIZE`` > 1 nothing here does anything.
"""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger("anndata_rnn")


def requested() -> bool:
    """Whether this process was started as one of several (``torchrun`` sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes outputs and logs."""
    return rank() == 0


def init(device: torch.device) -> None:
    """Join the process group ``torchrun`` describes (once); gloo on the CPU, nccl on CUDA."""
    if not requested() or active():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    if not is_main():  # one log, from rank 0
        logging.getLogger("anndata_rnn").setLevel(logging.ERROR)
    log.info("torch.distributed: %d processes (%s)", world_size(), backend)


def local_device(device: torch.device) -> torch.device:
    """This rank's device: its own GPU under torchrun (LOCAL_RANK), else ``device``."""
    if device.type == "cuda" and requested():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """This rank's positions among ``n`` training items for one epoch (DistributedSampler's
    rule: the same seeded permutation on every rank, padded to a multiple of the ranks, then
    every ``world``-th item)."""
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
    world = world_size()
    padded = np.concatenate([order, order[: (-n) % world]]) if n % world else order
    return padded[rank() :: world]


def mean(value: float) -> float:
    """The mean of ``value`` over the ranks (the value itself in one process)."""
    if not active():
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return float(tensor.item()) / world_size()


def gather_batches(parts: list) -> list:
    """Every rank's list of per-batch results, interleaved back into batch order (rank r ran
    batches r, r + world, ...)."""
    if not sharding():
        return parts
    everyone: list = [None] * world_size()
    dist.all_gather_object(everyone, parts)
    out = []
    for i in range(max(len(p) for p in everyone)):
        for rank_parts in everyone:
            if i < len(rank_parts):
                out.append(rank_parts[i])
    return out


def row_range(n: int) -> slice:
    """This rank's contiguous share of ``n`` items (rank r: the r-th of ``world`` near-equal
    ranges); everything in one process."""
    if not active():
        return slice(0, n)
    bounds = np.linspace(0, n, world_size() + 1).round().astype(int)
    return slice(int(bounds[rank()]), int(bounds[rank() + 1]))


def gather_ranges(part):
    """Every rank's ``part`` (any picklable value), in rank order (``[part]`` in one process)."""
    if not active():
        return [part]
    everyone: list = [None] * world_size()
    dist.all_gather_object(everyone, part)
    return everyone


_RANK_ONLY = {"on": False}


@contextlib.contextmanager
def this_rank_only():
    """Inside, batched inference runs every batch it is given on this rank (the caller has
    already split the work by :func:`row_range` and gathers it itself)."""
    before, _RANK_ONLY["on"] = _RANK_ONLY["on"], True
    try:
        yield
    finally:
        _RANK_ONLY["on"] = before


def sharding() -> bool:
    """Whether batched inference should share its batches among the ranks."""
    return active() and not _RANK_ONLY["on"]

"""Running a trained network over many sequences, and the masked mean every loss uses."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .. import distributed, timing
from .blocks import step_mask  # noqa: F401  (re-exported: the losses use it with masked_mean)


@timing.timed("inference")
@torch.no_grad()
def predict_in_batches(
    step: Callable[..., tuple[torch.Tensor, ...]],
    module: torch.nn.Module,
    values,
    lengths,
    device,
    *extra,
    batch_size: int = 512,
) -> tuple[np.ndarray, ...]:
    """Call ``step(module, x, lengths, *extra_batch)`` batch by batch in eval mode.

    ``values``, ``lengths`` and every array of ``extra`` are sliced into the same batches (numpy
    arrays or tensors); ``step`` returns a tuple of tensors whose batches are concatenated.
    """
    module.eval()
    module.to(device)
    device = torch.device(device)
    pin = device.type == "cuda"
    starts = range(0, len(values), batch_size)
    per_batch = []
    # under torchrun every rank runs its share of the batches; they are gathered in order
    if distributed.sharding():
        starts = starts[distributed.rank() :: distributed.world_size()]
    for start in starts:
        batch = slice(start, start + batch_size)
        x = torch.as_tensor(values[batch])
        x = (x.pin_memory() if pin else x).to(device, non_blocking=pin)
        n = torch.as_tensor(np.asarray(lengths[batch], dtype=np.int64))
        outputs = step(module, x, n, *(e[batch] for e in extra))
        # under autocast outputs may be half precision: results are float32 (numpy has no bf16)
        per_batch.append(tuple(_to_numpy(output) for output in outputs))
    per_batch = distributed.gather_batches(per_batch)
    return tuple(np.concatenate(collected) for collected in zip(*per_batch, strict=True))


def _to_numpy(output: torch.Tensor) -> np.ndarray:
    if output.is_floating_point() and output.dtype != torch.float64:
        output = output.float()
    return output.cpu().numpy()


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is set (over everything, or along ``dim``)."""
    weight = mask.to(values.dtype)
    if dim is None:
        return (values * weight).sum() / weight.sum().clamp_min(1.0)
    return (values * weight).sum(dim=dim) / weight.sum(dim=dim).clamp_min(1.0)

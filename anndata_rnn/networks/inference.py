"""Running a trained network over many sequences, and the masked mean every loss uses."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


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
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(values), batch_size):
        batch = slice(start, start + batch_size)
        x = torch.as_tensor(values[batch]).to(device)
        n = torch.as_tensor(np.asarray(lengths[batch], dtype=np.int64))
        outputs = step(module, x, n, *(e[batch] for e in extra))
        if not parts:
            parts = [[] for _ in outputs]
        for collected, output in zip(parts, outputs, strict=True):
            collected.append(output.cpu().numpy())
    return tuple(np.concatenate(collected) for collected in parts)


def step_mask(lengths: torch.Tensor, n_steps: int, device) -> torch.Tensor:
    """``(batch, n_steps)`` float mask, 1 on the real steps of each sequence."""
    steps = torch.arange(n_steps, device=device)[None, :]
    return (steps < lengths.to(device)[:, None]).float()


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is set (over everything, or along ``dim``)."""
    weight = mask.to(values.dtype)
    if dim is None:
        return (values * weight).sum() / weight.sum().clamp_min(1.0)
    return (values * weight).sum(dim=dim) / weight.sum(dim=dim).clamp_min(1.0)

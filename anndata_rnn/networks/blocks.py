"""Building blocks shared by the task heads: masks, pooling over steps, a temporal convolution
branch, downsampling in time and the L2-regularized linear path.

Everything here is a plain differentiable torch module taking padded ``(batch, steps, features)``
inputs and ``lengths``, so integrated gradients attribute through it.
"""

from __future__ import annotations

import torch
from torch import nn

POOLINGS = ("last", "mean", "attention")


def step_mask(lengths: torch.Tensor, max_len: int, device) -> torch.Tensor:
    """``(batch, max_len)`` float mask, 1 on real steps."""
    steps = torch.arange(max_len, device=device)[None, :]
    return (steps < lengths.to(device)[:, None]).float()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``(batch, steps, f)`` over the steps where ``mask`` is 1."""
    total = (values * mask[..., None]).sum(dim=1)
    return total / mask.sum(dim=1, keepdim=True).clamp_min(1.0)


class AttentionPool(nn.Module):
    """Softmax attention over the real steps: one learned score per step (Bahdanau-style)."""

    def __init__(self, size: int, hidden: int = 32):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(size, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(steps).squeeze(-1)
        scores = scores.masked_fill(mask <= 0, -1e9)
        weights = torch.softmax(scores, dim=1)
        return (steps * weights[..., None]).sum(dim=1)


class TemporalConv(nn.Module):
    """The fully convolutional branch of LSTM-FCN (Karim et al. 2018): three blocks of
    Conv1d over time + BatchNorm + ReLU (kernels 8, 5, 3), then a global average over the real
    steps. Padding is zeroed after every block, so it never enters the average."""

    def __init__(self, n_inputs: int, channels: tuple[int, ...] = (64, 64, 64)):
        super().__init__()
        kernels = (8, 5, 3)
        blocks = []
        size_in = n_inputs
        for size, kernel in zip(channels, kernels, strict=False):
            blocks.append(
                nn.Sequential(
                    nn.Conv1d(size_in, size, kernel, padding=kernel // 2),
                    nn.BatchNorm1d(size),
                    nn.ReLU(),
                )
            )
            size_in = size
        self.blocks = nn.ModuleList(blocks)
        self.out_size = size_in

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = (x * mask[..., None]).transpose(1, 2)  # (batch, features, steps)
        steps = h.shape[2]
        for block in self.blocks:  # an even kernel gives one extra step at the end: cut it
            h = block(h)[:, :, :steps] * mask[:, None, :]
        return h.sum(dim=2) / mask.sum(dim=1, keepdim=True).clamp_min(1.0)


def downsample(x: torch.Tensor, lengths: torch.Tensor, factor: int):
    """Average non-overlapping windows of ``factor`` real steps: ``(x', lengths')``.

    A window is averaged over its real steps only, so a sequence's tail does not mix with
    padding; the new length is ``ceil(length / factor)``.
    """
    batch, max_len, f = x.shape
    # a window longer than the batch's steps averages them all, as one window of max_len does:
    # capping keeps the padding bounded whatever factor a (possibly hostile) config gives
    factor = min(int(factor), max(max_len, 1))
    if factor <= 1:
        return x, lengths
    pad = (-max_len) % factor
    mask = step_mask(lengths, max_len, x.device)
    xm = x * mask[..., None]
    if pad:
        xm = torch.cat([xm, xm.new_zeros(batch, pad, f)], dim=1)
        mask = torch.cat([mask, mask.new_zeros(batch, pad)], dim=1)
    sums = xm.reshape(batch, -1, factor, f).sum(dim=2)
    counts = mask.reshape(batch, -1, factor).sum(dim=2, keepdim=True)
    new_lengths = torch.div(lengths + factor - 1, factor, rounding_mode="floor")
    return sums / counts.clamp_min(1.0), new_lengths


class LinearPath(nn.Module):
    """The "wide" part of Wide & Deep: a linear layer on the flattened inputs.

    ``max_steps`` given: unit-level, the whole padded sequence is flattened (padding zero; a longer
    sequence is cut to ``max_steps`` steps, a shorter one padded). ``max_steps=None``: per step,
    the step's own features. Starts at zero (joint training then starts from the deep part
    alone) unless set from a fitted linear model (:meth:`set_weights`).

    ``penalty()`` is ``||W||^2 / (2 C)``; :func:`anndata_rnn.training.fit` divides it by the
    number of training sequences and adds it to the mean training loss, which is the objective
    of scikit-learn's ``LogisticRegression(C=C)`` for the linear path alone (C = 1 is sklearn's
    default, the task's baseline).
    """

    def __init__(self, n_inputs: int, n_outputs: int, *, max_steps: int | None, c: float):
        super().__init__()
        self.max_steps = max_steps
        self.c = float(c)
        size = n_inputs * (max_steps or 1)
        self.linear = nn.Linear(size, n_outputs)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.max_steps is None:
            return self.linear(x)
        mask = step_mask(lengths, x.shape[1], x.device)
        x = x * mask[..., None]
        if x.shape[1] > self.max_steps:
            x = x[:, : self.max_steps]
        elif x.shape[1] < self.max_steps:
            x = torch.cat([x, x.new_zeros(len(x), self.max_steps - x.shape[1], x.shape[2])], 1)
        return self.linear(x.flatten(1))

    def penalty(self) -> torch.Tensor:
        return (self.linear.weight**2).sum() / (2 * self.c)

    @torch.no_grad()
    def set_weights(self, coef, intercept) -> None:
        """Copy a fitted linear model: ``coef`` ``(n_outputs, in_features)``, ``intercept``."""
        w = self.linear.weight
        self.linear.weight.copy_(torch.as_tensor(coef, dtype=w.dtype).reshape(w.shape))
        self.linear.bias.copy_(torch.as_tensor(intercept, dtype=w.dtype).reshape(-1))

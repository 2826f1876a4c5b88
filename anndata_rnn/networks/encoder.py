"""Recurrent encoders and task heads (PyTorch modules, no data handling)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class RNNEncoder(nn.Module):
    """Stacked LSTM/GRU layers of possibly different sizes over padded sequences.

    Each layer is its own ``nn.LSTM``/``nn.GRU`` so sizes can differ (e.g. ``(128, 64)``);
    sequences are packed, so padding never enters the recurrence.

    ``forward`` returns ``(steps, final)``: per-step outputs of the last layer
    ``(batch, max_len, out_size)`` (zeros on padding) and the final hidden state of each sequence
    ``(batch, out_size)`` (for bidirectional layers: last forward state + first backward state).
    """

    def __init__(
        self,
        n_inputs: int,
        hidden: tuple[int, ...] = (128, 64),
        *,
        cell: str = "lstm",
        dropout: float = 0.2,
        bidirectional: bool = False,
    ):
        super().__init__()
        self.cell = cell
        self.bidirectional = bidirectional
        directions = 2 if bidirectional else 1
        layers = []
        size_in = n_inputs
        for size in hidden:
            layers.append(CELLS[cell](size_in, size, batch_first=True, bidirectional=bidirectional))
            size_in = size * directions
        self.layers = nn.ModuleList(layers)
        self.dropout = nn.Dropout(dropout)
        self.out_size = size_in

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, state=None):
        """``(steps, final)``; see :meth:`run` to pass and receive recurrent states."""
        out, final, _ = self.run(x, lengths, state)
        return out, final

    def run(self, x: torch.Tensor, lengths: torch.Tensor, state=None):
        """``(steps, final, states)``: ``states`` holds every layer's recurrent state after each
        sequence's last real step; pass it back as ``state`` to continue the sequences."""
        max_len = x.shape[1]
        out = x
        final = None
        states = []
        # packing costs time; skip it when no sequence in the batch is padded
        full = bool((lengths == max_len).all())
        for i, layer in enumerate(self.layers):
            hx = None if state is None else state[i]
            if full:
                out, hidden = layer(out, hx)
            else:
                packed = pack_padded_sequence(
                    out, lengths.cpu(), batch_first=True, enforce_sorted=False
                )
                packed_out, hidden = layer(packed, hx)
                out, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=max_len)
            states.append(hidden)
            h = hidden[0] if isinstance(hidden, tuple) else hidden  # LSTM gives (h, c)
            final = torch.cat([h[-2], h[-1]], dim=1) if self.bidirectional else h[-1]
            if i < len(self.layers) - 1:
                out = self.dropout(out)
        return out, final, states


def build_encoder(n_inputs: int, architecture: dict) -> RNNEncoder:
    return RNNEncoder(
        n_inputs,
        tuple(architecture["hidden"]),
        cell=architecture["cell"],
        dropout=architecture["dropout"],
        bidirectional=architecture["bidirectional"],
    )

"""Forecasting head: predict the next step of a sequence from the steps up to now.

Input at step ``t``: the standardized features of step ``t`` followed, when the model uses time,
by the standardized time gap to the step being predicted (``t_{t+1} - t_t``), so irregular
sampling and explicit target times are part of the input. Output at step ``t``: the features of
step ``t + 1``. With ``residual=True`` (the default) the head predicts the change from step
``t`` and starts at zero, so the untrained network is the persistence forecast.

The recurrence is causal (unidirectional) and its state can be carried on, which is how
multi-step forecasts are rolled out: the prediction of one step is fed back as the next input.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .encoder import RNNEncoder, build_encoder


class SequenceForecaster(nn.Module):
    """Unidirectional encoder + linear head predicting the next step's ``n_outputs`` features.

    ``n_outputs`` are the first ``n_outputs`` input channels (the features); a trailing time-gap
    channel, when present, is input only.
    """

    def __init__(self, encoder: RNNEncoder, n_outputs: int, residual: bool = True):
        super().__init__()
        if encoder.bidirectional:
            raise ValueError("a forecaster needs a unidirectional (causal) encoder")
        self.encoder = encoder
        self.n_outputs = n_outputs
        self.residual = residual
        self.dropout = nn.Dropout(encoder.dropout.p)
        self.head = nn.Linear(encoder.out_size, n_outputs)
        if residual:  # start exactly at persistence: an untrained change is zero
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, state=None):
        """One pass over padded inputs ``x`` ``(batch, steps, n_inputs)``.

        Returns ``(predictions, hidden, state)``: next-step predictions ``(batch, steps,
        n_outputs)``, last-layer outputs ``(batch, steps, hidden)`` (zeros on padding) and the
        recurrent state of every layer after each sequence's last real step (pass it back as
        ``state`` to continue the sequences).
        """
        max_len = x.shape[1]
        full = bool((lengths == max_len).all())
        out = x
        states = []
        layers = self.encoder.layers
        for i, layer in enumerate(layers):
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
            if i < len(layers) - 1:
                out = self.encoder.dropout(out)
        change = self.head(self.dropout(out))
        prediction = x[..., : self.n_outputs] + change if self.residual else change
        return prediction, out, states


def build(n_inputs: int, config: dict) -> SequenceForecaster:
    """The forecaster described by a model config (``architecture``, ``n_outputs``, ``residual``)."""
    encoder = build_encoder(n_inputs, config["architecture"])
    return SequenceForecaster(
        encoder, int(config["n_outputs"]), residual=bool(config.get("residual", True))
    )

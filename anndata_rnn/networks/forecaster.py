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

from .encoder import RNNEncoder, build_encoder
from .inference import predict_in_batches


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
        out, _, states = self.encoder.run(x, lengths, state)
        change = self.head(self.dropout(out))
        prediction = x[..., : self.n_outputs] + change if self.residual else change
        return prediction, out, states


def build(n_inputs: int, config: dict) -> SequenceForecaster:
    """The forecaster described by a model config (``architecture``, ``n_outputs``, ``residual``)."""
    encoder = build_encoder(n_inputs, config["architecture"])
    return SequenceForecaster(
        encoder, int(config["n_outputs"]), residual=bool(config.get("residual", True))
    )


def rollout(module: SequenceForecaster, x, lengths, later_gaps, device, batch_size: int = 512):
    """One-step forecasts along ``x`` and the rollout of ``1 + later_gaps.shape[1]`` steps.

    ``x`` must carry, at each sequence's last step, the gap channel to the first step rolled
    out; ``later_gaps`` (``(n, k)``, already standardized, or ``None`` for a model without a
    time channel) are the gap channels of the following rolled-out steps: each prediction is
    fed back with them as the next input. Returns standardized numpy arrays
    ``(one_step, hidden, final_hidden, rollout)``.
    """
    n_more = later_gaps.shape[1]
    use_time = module.encoder.layers[0].input_size > module.n_outputs

    def step(net, xb, nb, gaps):
        prediction, out, state = net(xb, nb)
        rows = torch.arange(len(nb), device=xb.device)
        last = (nb - 1).to(xb.device)
        current = prediction[rows, last]
        rolled = [current]
        gaps = torch.as_tensor(gaps).to(xb.device)
        ones = torch.ones(len(nb), dtype=torch.int64)
        for j in range(n_more):
            inp = current[:, None, :]
            if use_time:
                inp = torch.cat([inp, gaps[:, j, None, None]], dim=-1)
            next_prediction, _, state = net(inp, ones, state)
            current = next_prediction[:, 0]
            rolled.append(current)
        return prediction, out, out[rows, last], torch.stack(rolled, dim=1)[..., : net.n_outputs]

    return predict_in_batches(step, module, x, lengths, device, later_gaps, batch_size=batch_size)

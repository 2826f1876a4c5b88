"""Sequence autoencoder: RNN encoder -> latent vector -> RNN decoder reconstructing the sequence."""

from __future__ import annotations

import torch
from torch import nn

from .encoder import CELLS, RNNEncoder, build_encoder


class SequenceAutoencoder(nn.Module):
    """Unsupervised sequence autoencoder.

    The encoder (stacked LSTM/GRU) reads the standardized sequence; its final hidden state is
    projected to the ``n_latent``-dimensional latent vector ``z``. The decoder (one LSTM/GRU
    layer of the size of the encoder's last layer) receives ``z`` at every step (plus the
    time-gap channel when the inputs carry one) and a linear layer maps its outputs back to the
    ``n_outputs`` input features. The loss is computed by the caller on real (unpadded) steps.

    The same projection applied to the encoder's output at each step gives a per-step latent
    (:meth:`encode_steps`); at the last real step of a unidirectional encoder it equals ``z``.
    """

    def __init__(
        self,
        encoder: RNNEncoder,
        n_latent: int,
        n_outputs: int,
        *,
        time_channel: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.n_latent = n_latent
        self.n_outputs = n_outputs
        self.time_channel = time_channel
        self.to_latent = nn.Linear(encoder.out_size, n_latent)
        size = encoder.layers[-1].hidden_size
        self.decoder = CELLS[encoder.cell](n_latent + int(time_channel), size, batch_first=True)
        self.to_output = nn.Linear(size, n_outputs)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Latent vector of each sequence ``(batch, n_latent)``."""
        _, final = self.encoder(x, lengths)
        return self.to_latent(final)

    def encode_steps(self, x: torch.Tensor, lengths: torch.Tensor):
        """``(per-step latent (batch, max_len, n_latent), sequence latent (batch, n_latent))``."""
        steps, final = self.encoder(x, lengths)
        return self.to_latent(steps), self.to_latent(final)

    def decode(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(batch, max_len, n_outputs)`` from ``z`` fed at every step (plus
        the time-gap channel of ``x`` when the inputs carry one)."""
        inputs = z[:, None, :].expand(-1, x.shape[1], -1)
        if self.time_channel:
            inputs = torch.cat([inputs, x[..., -1:]], dim=-1)
        out, _ = self.decoder(inputs)
        return self.to_output(out)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """Returns ``(reconstruction, latent)``."""
        z = self.encode(x, lengths)
        return self.decode(z, x), z


def masked_mse(
    reconstruction: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Mean squared error over the real steps and the reconstructed features only."""
    target = x[..., : reconstruction.shape[-1]]
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    mask = (steps < lengths.to(x.device)[:, None]).to(x.dtype)[..., None]
    squared = (reconstruction - target) ** 2 * mask
    return squared.sum() / (mask.sum() * reconstruction.shape[-1]).clamp_min(1.0)


def build(n_inputs: int, config: dict) -> SequenceAutoencoder:
    """The autoencoder a model config describes (``architecture`` with ``n_latent``, ``n_outputs``)."""
    arch = config["architecture"]
    encoder = build_encoder(n_inputs, arch)
    return SequenceAutoencoder(
        encoder,
        int(arch["n_latent"]),
        int(arch["n_outputs"]),
        time_channel=bool(arch.get("time_channel", False)),
    )

"""Sequence autoencoder: RNN encoder -> latent vector -> RNN decoder reconstructing the sequence."""

from __future__ import annotations

import torch
from torch import nn

from .encoder import CELLS, RNNEncoder, build_encoder
from .inference import masked_mean, predict_in_batches, step_mask


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
    mask = step_mask(lengths, x.shape[1], x.device)[..., None].expand_as(reconstruction)
    return masked_mean((reconstruction - target) ** 2, mask)


def sequence_errors(reconstruction: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor):
    """Each sequence's reconstruction MSE over its real steps ``(batch,)``."""
    squared = ((reconstruction - x[..., : reconstruction.shape[-1]]) ** 2).mean(dim=-1)
    return masked_mean(squared, step_mask(lengths, x.shape[1], x.device), dim=1)


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


def embed_sequences(
    module: SequenceAutoencoder, values, lengths, device, batch_size: int = 512, steps=False
):
    """``(sequence latent, per-step latent or None, per-sequence reconstruction MSE)``."""

    def step(net, x, n):
        per_step, z = net.encode_steps(x, n)
        errors = sequence_errors(net.decode(z, x), x, n)
        return (z, errors, per_step) if steps else (z, errors)

    outputs = predict_in_batches(step, module, values, lengths, device, batch_size=batch_size)
    return outputs[0], (outputs[2] if steps else None), outputs[1]

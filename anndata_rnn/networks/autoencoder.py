"""Sequence autoencoder: RNN encoder -> latent vector -> RNN decoder reconstructing the sequence.

The model config's ``architecture`` may carry these keys (absent keys give the original
recurrent autoencoder, so model files written before them load and behave as before):

- ``linear_path`` (bool, absent = False): a linear encoder and decoder on the flattened sequence
  (:class:`LinearAutoencoderPath`) beside the recurrent ones, started at PCA; needs
  ``max_steps`` (the steps the linear path reads: longer sequences are cut, shorter padded).
- ``recurrent`` (bool, absent = True): False keeps only the linear path (the ablation "linear
  path alone", trained the same way from the same start).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .encoder import CELLS, RNNEncoder, build_encoder
from .inference import masked_mean, predict_in_batches, step_mask


class LinearAutoencoderPath(nn.Module):
    """A linear encoder and decoder on the flattened sequence, the PCA of the autoencoder.

    The first ``n_outputs`` channels of the first ``max_steps`` steps (padding zero; a longer
    sequence is cut, a shorter one padded) are flattened to ``x`` of size
    ``max_steps * n_outputs``; ``latent = W x + b`` and ``reconstruction = V z + c``, reshaped to
    ``(max_steps, n_outputs)`` (steps beyond ``max_steps`` get 0). Both start at zero, or at a
    PCA (:meth:`set_pca`: ``W`` = the loadings, ``b = -W mean``, ``V = Wᵀ``, ``c`` = the mean), at
    which the path reconstructs exactly as the PCA does. The per-step latent (:meth:`encode_steps`)
    is the same sum over the steps up to each one (plus ``b``), so it equals the latent at the
    last real step.
    """

    def __init__(self, n_outputs: int, max_steps: int, n_latent: int):
        super().__init__()
        self.n_outputs, self.max_steps = int(n_outputs), int(max_steps)
        size = self.n_outputs * self.max_steps
        self.encoder = nn.Linear(size, n_latent)
        self.decoder = nn.Linear(n_latent, size)
        for layer in (self.encoder, self.decoder):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _steps(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The features of the first ``max_steps`` steps, padding zero ``(batch, max_steps, f)``."""
        x = x[:, : self.max_steps, : self.n_outputs]
        x = x * step_mask(lengths, x.shape[1], x.device)[..., None]
        if x.shape[1] < self.max_steps:
            x = torch.cat([x, x.new_zeros(len(x), self.max_steps - x.shape[1], x.shape[2])], 1)
        return x

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._steps(x, lengths).flatten(1))

    def encode_steps(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(batch, x.shape[1], n_latent)``: the latent of the steps up to each step."""
        weight = self.encoder.weight.reshape(-1, self.max_steps, self.n_outputs)
        parts = torch.einsum("bsf,lsf->bsl", self._steps(x, lengths), weight)
        running = parts.cumsum(dim=1) + self.encoder.bias
        if x.shape[1] <= self.max_steps:
            return running[:, : x.shape[1]]
        tail = running[:, -1:].expand(-1, x.shape[1] - self.max_steps, -1)
        return torch.cat([running, tail], dim=1)

    def decode(self, z: torch.Tensor, n_steps: int) -> torch.Tensor:
        out = self.decoder(z).reshape(len(z), self.max_steps, self.n_outputs)
        if n_steps <= self.max_steps:
            return out[:, :n_steps]
        return torch.cat([out, out.new_zeros(len(z), n_steps - self.max_steps, out.shape[2])], 1)

    @torch.no_grad()
    def set_pca(self, components: np.ndarray, mean: np.ndarray) -> None:
        """Start at a PCA of the flattened sequences: ``components`` ``(k, max_steps *
        n_outputs)`` (k <= the latent size; further latent dimensions start at zero), ``mean``
        ``(max_steps * n_outputs,)``."""
        w = torch.as_tensor(np.asarray(components, dtype=np.float64))
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float64))
        k = w.shape[0]
        dtype = self.encoder.weight.dtype
        for layer in (self.encoder, self.decoder):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.encoder.weight[:k] = w.to(dtype)
        self.encoder.bias[:k] = (-(w @ mean)).to(dtype)
        self.decoder.weight[:, :k] = w.T.to(dtype)
        self.decoder.bias.copy_(mean.to(dtype))


class SequenceAutoencoder(nn.Module):
    """Unsupervised sequence autoencoder.

    The encoder (stacked LSTM/GRU) reads the standardized sequence; its final hidden state is
    projected to the ``n_latent``-dimensional latent vector ``z``. The decoder (one LSTM/GRU
    layer of the size of the encoder's last layer) receives ``z`` at every step (plus the
    time-gap channel when the inputs carry one) and a linear layer maps its outputs back to the
    ``n_outputs`` input features. The loss is computed by the caller on real (unpadded) steps.

    The same projection applied to the encoder's output at each step gives a per-step latent
    (:meth:`encode_steps`); at the last real step of a unidirectional encoder it equals ``z``.

    With a ``linear`` path (:class:`LinearAutoencoderPath`, ``max_steps`` given) the latent is
    the linear path's plus the recurrent projection, and the reconstruction the linear decoder's
    plus the recurrent decoder's; the recurrent projections then start at zero, so that a model
    whose linear path starts at a PCA reconstructs exactly as that PCA before training.
    ``encoder=None`` keeps the linear path alone (the ablation).
    """

    def __init__(
        self,
        encoder: RNNEncoder | None,
        n_latent: int,
        n_outputs: int,
        *,
        time_channel: bool = False,
        max_steps: int | None = None,
    ):
        super().__init__()
        if encoder is None and not max_steps:
            raise ValueError("an autoencoder without a recurrent encoder needs the linear path")
        self.encoder = encoder
        self.n_latent = n_latent
        self.n_outputs = n_outputs
        self.time_channel = time_channel
        self.linear = LinearAutoencoderPath(n_outputs, max_steps, n_latent) if max_steps else None
        if encoder is None:
            return
        self.to_latent = nn.Linear(encoder.out_size, n_latent)
        size = encoder.layers[-1].hidden_size
        self.decoder = CELLS[encoder.cell](n_latent + int(time_channel), size, batch_first=True)
        self.to_output = nn.Linear(size, n_outputs)
        if self.linear is not None:  # the recurrent part starts at zero contribution
            for layer in (self.to_latent, self.to_output):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Latent vector of each sequence ``(batch, n_latent)``."""
        if self.encoder is None:
            return self.linear.encode(x, lengths)
        _, final = self.encoder(x, lengths)
        z = self.to_latent(final)
        return z if self.linear is None else z + self.linear.encode(x, lengths)

    def encode_steps(self, x: torch.Tensor, lengths: torch.Tensor):
        """``(per-step latent (batch, max_len, n_latent), sequence latent (batch, n_latent))``."""
        if self.encoder is None:
            return self.linear.encode_steps(x, lengths), self.linear.encode(x, lengths)
        steps, final = self.encoder(x, lengths)
        per_step, z = self.to_latent(steps), self.to_latent(final)
        if self.linear is None:
            return per_step, z
        return (
            per_step + self.linear.encode_steps(x, lengths),
            z + self.linear.encode(x, lengths),
        )

    def decode(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(batch, max_len, n_outputs)`` from ``z`` fed at every step (plus
        the time-gap channel of ``x`` when the inputs carry one)."""
        linear = None if self.linear is None else self.linear.decode(z, x.shape[1])
        if self.encoder is None:
            return linear
        inputs = z[:, None, :].expand(-1, x.shape[1], -1)
        if self.time_channel:
            inputs = torch.cat([inputs, x[..., -1:]], dim=-1)
        out, _ = self.decoder(inputs)
        out = self.to_output(out)
        return out if linear is None else out + linear

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
    """The autoencoder a model config describes (``architecture`` with ``n_latent``,
    ``n_outputs`` and the optional ``linear_path``, ``max_steps``, ``recurrent``)."""
    arch = config["architecture"]
    recurrent = bool(arch.get("recurrent", True))
    linear = bool(arch.get("linear_path", False)) or not recurrent
    return SequenceAutoencoder(
        build_encoder(n_inputs, arch) if recurrent else None,
        int(arch["n_latent"]),
        int(arch["n_outputs"]),
        time_channel=bool(arch.get("time_channel", False)),
        max_steps=int(arch["max_steps"]) if linear else None,
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

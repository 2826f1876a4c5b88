"""Classification head: one label per sequence or per step."""

from __future__ import annotations

import torch
from torch import nn

from .encoder import RNNEncoder, build_encoder
from .inference import predict_in_batches


class SequenceClassifier(nn.Module):
    """Encoder + linear head; ``level="unit"`` classifies whole sequences, ``"step"`` each step."""

    def __init__(self, encoder: RNNEncoder, n_classes: int, level: str = "unit"):
        super().__init__()
        self.encoder = encoder
        self.level = level
        self.dropout = nn.Dropout(encoder.dropout.p)
        self.head = nn.Linear(encoder.out_size, n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """Returns ``(logits, embedding)``; shapes follow the level (per sequence or per step)."""
        steps, final = self.encoder(x, lengths)
        embedding = final if self.level == "unit" else steps
        return self.head(self.dropout(embedding)), embedding


def build(n_inputs: int, config: dict) -> SequenceClassifier:
    """The classifier described by a model config (``architecture``, ``classes``, ``label_level``)."""
    encoder = build_encoder(n_inputs, config["architecture"])
    return SequenceClassifier(encoder, len(config["classes"]), level=config["label_level"])


def predict_proba(module: SequenceClassifier, values, lengths, device, batch_size: int = 512):
    """``(probabilities, embeddings)`` of every sequence as numpy arrays (eval mode, batched)."""

    def step(net, x, n):
        logits, embedding = net(x, n)
        return torch.softmax(logits, dim=-1), embedding

    return predict_in_batches(step, module, values, lengths, device, batch_size=batch_size)

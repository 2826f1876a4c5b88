"""Classification head: one label per sequence or per step.

The model config's ``architecture`` may carry these keys (absent keys give the original model,
so model files written before them load and behave as before):

- ``linear_path`` (bool, absent = False): add a linear layer on the flattened standardized input
  to the logits (Wide & Deep); ``linear_c`` (float, default 1) is its inverse L2 strength as
  scikit-learn's ``C``; unit-level models need ``max_steps`` (steps the linear layer reads;
  longer sequences are cut, shorter padded).
- ``linear_lr`` (float, absent = 1): learning-rate multiplier of the linear path.
- ``recurrent`` (bool, absent = True): False keeps only the linear path (the ablation
  "linear path alone", trained the same way).
- ``pooling``: ``"last"`` (absent: the final hidden state), ``"mean"`` or ``"attention"`` over the
  hidden states of the real steps (unit level only).
- ``conv`` (list of channel sizes, absent/empty = none): a temporal convolution branch beside the
  recurrence (LSTM-FCN); its pooled features join the recurrent ones before the head.
- ``downsample`` (int, absent = 1): average windows of this many steps before the recurrence.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .blocks import POOLINGS, AttentionPool, LinearPath, TemporalConv, downsample, step_mask
from .encoder import RNNEncoder, build_encoder
from .inference import predict_in_batches

DEFAULT_LINEAR_C = 1.0
#: unit-level sequences longer than this are read by the recurrence in windows (see below)
LONG_SEQUENCE_STEPS = 64
#: ... so that it sees about this many steps
RECURRENT_STEPS = 32


def new_architecture(
    arch: dict, *, max_steps: int, level: str = "unit", linear_path: bool = True
) -> dict:
    """The architecture keys of a new classifier (what the task stores in the model config).

    Adds ``linear_path`` (default on), ``linear_c`` and ``max_steps`` (the steps the linear
    path reads) to ``arch`` (from ``tl._common.architecture``). Unit-level sequences longer than
    ``LONG_SEQUENCE_STEPS`` steps are averaged in windows of ``ceil(max_steps /
    RECURRENT_STEPS)`` steps before the recurrence (``downsample``) and the hidden states are
    mean-pooled (``pooling="mean"``): measured on few long sequences (benchmarks/accuracy/
    long_sequences.py), the last hidden state after 150 steps stays at chance, the pooled
    windowed recurrence learns the shape. Keys already in ``arch`` are kept.
    """
    out = dict(arch)
    out.setdefault("linear_path", bool(linear_path))
    out.setdefault("linear_c", DEFAULT_LINEAR_C)
    out.setdefault("max_steps", int(max_steps))
    if level == "unit" and max_steps > LONG_SEQUENCE_STEPS:
        out.setdefault("downsample", math.ceil(max_steps / RECURRENT_STEPS))
        out.setdefault("pooling", "mean")
    return out


class SequenceClassifier(nn.Module):
    """Recurrent encoder + linear head, optionally beside a linear path on the raw input.

    ``level="unit"`` classifies whole sequences, ``"step"`` each step. ``forward(x, lengths)``
    returns ``(logits, embedding)``; the embedding is the recurrent representation the head reads
    (the linear path's logits when ``encoder`` is None, i.e. the linear path alone).
    """

    def __init__(
        self,
        encoder: RNNEncoder | None,
        n_classes: int,
        level: str = "unit",
        *,
        n_inputs: int | None = None,
        linear_path: bool = False,
        linear_c: float = DEFAULT_LINEAR_C,
        max_steps: int | None = None,
        pooling: str = "last",
        conv: tuple[int, ...] = (),
        downsample: int = 1,
        linear_lr: float = 1.0,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if encoder is None and not linear_path:
            raise ValueError("a classifier without a recurrent encoder needs linear_path=True")
        if level == "step" and (conv or downsample > 1 or pooling != "last"):
            raise ValueError("conv, downsample and pooling apply to unit-level labels only")
        self.encoder = encoder
        self.level = level
        self.pooling = pooling
        self.downsample = int(downsample)
        self.linear_lr = float(linear_lr)
        self.linear = None
        if linear_path:
            if n_inputs is None or (level == "unit" and not max_steps):
                raise ValueError("the linear path needs n_inputs (and max_steps for unit labels)")
            self.linear = LinearPath(
                n_inputs,
                n_classes,
                max_steps=int(max_steps) if level == "unit" else None,
                c=linear_c,
            )
        if encoder is None:
            return
        self.dropout = nn.Dropout(encoder.dropout.p)
        self.attention = AttentionPool(encoder.out_size) if pooling == "attention" else None
        self.conv = TemporalConv(n_inputs, tuple(conv)) if conv else None
        size = encoder.out_size + (self.conv.out_size if self.conv is not None else 0)
        self.head = nn.Linear(size, n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """Returns ``(logits, embedding)``; shapes follow the level (per sequence or per step)."""
        wide = self.linear(x, lengths) if self.linear is not None else None
        if self.encoder is None:
            return wide, wide
        xr, lr = downsample(x, lengths, self.downsample)
        steps, final = self.encoder(xr, lr)
        if self.level == "step":
            embedding = steps
        elif self.pooling == "last":
            embedding = final
        else:
            mask = step_mask(lr, steps.shape[1], x.device)
            if self.pooling == "mean":
                embedding = (steps * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(1)
            else:
                embedding = self.attention(steps, mask)
        if self.conv is not None:
            mask = step_mask(lengths, x.shape[1], x.device)
            embedding = torch.cat([embedding, self.conv(x, mask)], dim=-1)
        logits = self.head(self.dropout(embedding))
        if wide is not None:
            logits = logits + wide
        return logits, embedding

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer groups: the linear path learns at ``linear_lr`` × ``lr`` (Wide & Deep gives
        its wide part its own optimizer), the rest at ``lr``."""
        if self.linear is None or self.linear_lr == 1.0:
            return [{"params": list(self.parameters()), "lr": lr}]
        wide = set(map(id, self.linear.parameters()))
        rest = [p for p in self.parameters() if id(p) not in wide]
        groups = [{"params": list(self.linear.parameters()), "lr": lr * self.linear_lr}]
        return groups + ([{"params": rest, "lr": lr}] if rest else [])

    @torch.no_grad()
    def init_linear(self, coef, intercept, classes=None) -> None:
        """Start the linear path at a fitted linear classifier (e.g. the task's logistic
        regression on the same flattened inputs) and the recurrent head at zero, so the untrained
        model *is* that classifier and training (with ``fit(..., initial_candidate=True)``)
        starts from it.

        ``coef`` ``(k, in_features)`` and ``intercept`` ``(k,)`` as scikit-learn gives them;
        ``classes`` are the class codes they belong to (default all); a binary model's single
        row is the logit of ``classes[1]``. Classes the fitted model never saw get a bias of
        -10 (probability ~0), as the baseline gives them.
        """
        if self.linear is None:
            raise ValueError("this classifier has no linear path")
        n_classes = self.linear.linear.out_features
        classes = list(range(n_classes)) if classes is None else [int(c) for c in classes]
        coef = np.atleast_2d(np.asarray(coef, dtype=np.float32))
        intercept = np.atleast_1d(np.asarray(intercept, dtype=np.float32))
        weight = np.zeros((n_classes, coef.shape[1]), dtype=np.float32)
        bias = np.full(n_classes, -10.0, dtype=np.float32)
        if coef.shape[0] == 1 and len(classes) == 2:
            bias[classes] = 0.0
            weight[classes[1]], bias[classes[1]] = coef[0], intercept[0]
        else:
            weight[classes], bias[classes] = coef, intercept
        self.linear.set_weights(weight, bias)
        if self.encoder is not None:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def penalty(self) -> torch.Tensor | float:
        """L2 term of the linear path, added to the training loss by :func:`training.fit`."""
        return self.linear.penalty() if self.linear is not None else 0.0


def build(n_inputs: int, config: dict) -> SequenceClassifier:
    """The classifier described by a model config (``architecture``, ``classes``, ``label_level``).

    See the module docstring for the optional architecture keys.
    """
    arch = config["architecture"]
    recurrent = bool(arch.get("recurrent", True))
    encoder = build_encoder(n_inputs, arch) if recurrent else None
    return SequenceClassifier(
        encoder,
        len(config["classes"]),
        level=config["label_level"],
        n_inputs=n_inputs,
        linear_path=bool(arch.get("linear_path", False)),
        linear_c=float(arch.get("linear_c", DEFAULT_LINEAR_C)),
        max_steps=arch.get("max_steps"),
        pooling=arch.get("pooling", "last"),
        conv=tuple(arch.get("conv") or ()),
        downsample=int(arch.get("downsample", 1)),
        linear_lr=float(arch.get("linear_lr", 1.0)),
    )


def predict_proba(module: SequenceClassifier, values, lengths, device, batch_size: int = 512):
    """``(probabilities, embeddings)`` of every sequence as numpy arrays (eval mode, batched)."""

    def step(net, x, n):
        logits, embedding = net(x, n)
        return torch.softmax(logits, dim=-1), embedding

    return predict_in_batches(step, module, values, lengths, device, batch_size=batch_size)

"""Networks: a recurrent encoder (:mod:`.encoder`), one head module per task, and inference.

``build_module(task, ...)`` rebuilds a task's network from a model config. The task name comes
from a model file, so it is looked up in a fixed table of builders, never imported by name.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ..errors import InputError, ModelFileError
from . import autoencoder, classifier, forecaster
from .encoder import CELLS, RNNEncoder, build_encoder
from .inference import masked_mean, predict_in_batches, step_mask

#: task name -> ``build(n_inputs, config)`` of the module defining its network
BUILDERS = {
    "classify": classifier.build,
    "forecast": forecaster.build,
    "embed": autoencoder.build,
}
TASK_MODULES = BUILDERS  # the task names a model file may name


def build_module(task: str, n_inputs: int, config: dict) -> nn.Module:
    if task not in BUILDERS:
        raise ModelFileError(
            f"unknown task {task!r} in the model config; known tasks: {', '.join(BUILDERS)}"
        )
    return BUILDERS[task](n_inputs, config)


#: bounds of ``hidden``: a recurrent layer of 4,096 units already holds ~10⁸ weights
MAX_LAYERS, MAX_HIDDEN = 8, 4096


def parse_hidden(hidden) -> tuple[int, ...]:
    """``"128,64"`` or ``(128, 64)`` -> ``(128, 64)``; every size must be >= 1."""
    if isinstance(hidden, str):
        try:
            hidden = tuple(int(h) for h in hidden.split(",") if h.strip())
        except ValueError:
            raise InputError(f"hidden sizes must be integers like 128,64, got {hidden!r}") from None
    hidden = tuple(int(h) for h in np.atleast_1d(hidden))
    if not hidden or min(hidden) < 1:
        raise InputError(f"hidden layer sizes must be >= 1, got {hidden}")
    if len(hidden) > MAX_LAYERS or max(hidden) > MAX_HIDDEN:
        raise InputError(
            f"hidden takes at most {MAX_LAYERS} layers of at most {MAX_HIDDEN} units, got "
            f"{len(hidden)} layers up to {max(hidden)}: give e.g. 128,64"
        )
    return hidden


def architecture(hidden, cell: str, dropout: float, bidirectional: bool) -> dict:
    """The validated encoder architecture a model config stores."""
    if cell not in CELLS:
        raise InputError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
    if not 0 <= dropout < 1:
        raise InputError(f"dropout must be in [0, 1), got {dropout}")
    return {
        "hidden": list(parse_hidden(hidden)),
        "cell": cell,
        "dropout": float(dropout),
        "bidirectional": bool(bidirectional),
    }


__all__ = [
    "BUILDERS",
    "CELLS",
    "RNNEncoder",
    "TASK_MODULES",
    "architecture",
    "build_encoder",
    "build_module",
    "masked_mean",
    "parse_hidden",
    "predict_in_batches",
    "step_mask",
]

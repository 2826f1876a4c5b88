"""Networks: a recurrent encoder (:mod:`.encoder`) and one head module per task.

``build_module(task, ...)`` rebuilds a task's network from a model config. The task name comes
from a model file, so it is looked up in a fixed table, never imported by an arbitrary name.
"""

from __future__ import annotations

import importlib

from torch import nn

from ..errors import ModelFileError
from .encoder import CELLS, RNNEncoder, build_encoder

#: task name -> module of this package that defines ``build(n_inputs, config)``
TASK_MODULES = {
    "classify": "classifier",
    "forecast": "forecaster",
    "embed": "autoencoder",
}


def build_module(task: str, n_inputs: int, config: dict) -> nn.Module:
    if task not in TASK_MODULES:
        raise ModelFileError(
            f"unknown task {task!r} in the model config; known tasks: {', '.join(TASK_MODULES)}"
        )
    module = importlib.import_module(f"{__name__}.{TASK_MODULES[task]}")
    return module.build(n_inputs, config)


__all__ = ["CELLS", "RNNEncoder", "build_encoder", "build_module", "TASK_MODULES"]

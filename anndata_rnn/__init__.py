"""anndata-rnn: recurrent neural networks (LSTM, GRU) for gene-expression sequences in AnnData."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, pl, report, tl
from .errors import AnnDataRNNError, InputError, ModelFileError, TrainingError
from .model import Model

try:
    __version__ = version("anndata-rnn")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.2.0"

__all__ = [
    "Model",
    "tl",
    "pl",
    "report",
    "datasets",
    "AnnDataRNNError",
    "InputError",
    "ModelFileError",
    "TrainingError",
]

"""anndata-rnn: recurrent neural networks (LSTM, GRU) for gene-expression sequences in AnnData."""

from importlib.metadata import PackageNotFoundError, version

from .threads import set_cli_wait_policy

set_cli_wait_policy()  # the command line's OpenMP wait policy: before torch loads OpenMP

from . import datasets, pl, report, tl  # noqa: E402
from .errors import AnnDataRNNError, InputError, ModelFileError, TrainingError  # noqa: E402
from .model import Model  # noqa: E402

try:
    __version__ = version("anndata-rnn")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.3.0"

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

"""Exception types. The CLI maps them to one-line messages and exit codes."""


class AnnDataRNNError(Exception):
    """Base class for errors anndata-rnn reports to the user (exit code 1: runtime failure)."""

    exit_code = 1


class InputError(AnnDataRNNError, ValueError):
    """Bad input or usage: the message names the problem and the fix (exit code 2)."""

    exit_code = 2


class ModelFileError(InputError):
    """A model file that cannot be used: not a model, unknown version, corrupted."""


class TrainingError(AnnDataRNNError):
    """Training failed at run time (for example a NaN loss)."""

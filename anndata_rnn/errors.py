"""Exception types (the CLI maps them to one-line messages and exit codes), and how names are
listed in a message so that it stays one short line whatever the data holds."""


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


def listed(names, limit: int = 5, width: int = 40) -> str:
    """``names`` joined by commas for a message: at most ``limit`` of them, each cut to
    ``width`` characters with "…", then "and N more"."""
    names = [str(n) for n in names]
    shown = [n if len(n) <= width else n[: width - 1] + "…" for n in names[:limit]]
    more = f" and {len(names) - limit:,} more" if len(names) > limit else ""
    return ", ".join(shown) + more
